"""The Megatron-Bridge lane runs in ``.venv-megatron`` (Python 3.12; ``scripts/test.sh`` runs it there).

In the Python 3.11 environment Megatron-Bridge cannot be installed, so this folder is not collected
there; ``scripts/test.sh`` runs it in its own environment, so nothing is left out of a full run.
"""

import importlib.util

if importlib.util.find_spec("megatron.bridge") is None:
    collect_ignore_glob = ["test_*.py"]
