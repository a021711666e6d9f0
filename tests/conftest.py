"""Shared test configuration: the `cuda` marker skips cleanly without a usable GPU."""
import pytest
import torch


def _cuda_usable() -> bool:
    try:
        from gradfast._native import cuda_usable
    except ImportError:
        return False
    return cuda_usable()


CUDA = _cuda_usable()


def pytest_collection_modifyitems(config, items):
    skip = pytest.mark.skip(reason="needs a CUDA device and gradfast's CUDA kernels")
    for item in items:
        if "cuda" in item.keywords and not CUDA:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def pytest_configure(config):
    import os

    if os.environ.get("GRADFAST_EXPECT_INSTALLED") == "1":
        import gradfast

        # CI runs the suite against the installed wheel, never the source tree.
        assert "site-packages" in gradfast.__file__, gradfast.__file__
