"""Model adapters: one file per family, registered by ``loader`` name in ``registry.py``. Adapters speak mteb's
encoder protocol structurally and never import mteb at module level."""
