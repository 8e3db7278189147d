"""Result files: writing them (io.py, atomically, in mteb's layout) and reading every format we meet (load.py)."""
