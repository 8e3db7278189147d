"""`python -m harness …` (and `torchrun -m harness run …`) is the same as the `harness` command."""

import sys

from harness.cli import main

sys.exit(main())
