from __future__ import annotations

import os

# Tests never reach a model hub: everything is built locally (tiny models) or skipped.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
