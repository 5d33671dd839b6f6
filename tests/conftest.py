from __future__ import annotations

import os

# Tests never reach a model hub: everything is built locally (tiny models) or skipped.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


import pytest  # noqa: E402


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models gain nothing from intra-op threads; on a shared 2-core box they spin."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_sd():
    """The in-memory tiny SD model (seed 0), built once per test module."""
    from bridge.pipeline.tiny import build_tiny_components

    return build_tiny_components(seed=0)
