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


@pytest.fixture(scope="session")
def cudasim():
    """gradfast's _C with its CUDA kernels compiled for the CPU (tools/cudasim), built once
    per session; a skip when the build tools are missing, a failure where CI expects it
    (GRADFAST_EXPECT_CUDASIM=1)."""
    import os

    from sim_device import load_tool

    build_tool = load_tool("build")
    build, load, missing_tool = build_tool.build, build_tool.load, build_tool.missing_tool

    tool = missing_tool()
    if tool is not None:
        if os.environ.get("GRADFAST_EXPECT_CUDASIM") == "1":
            pytest.fail(f"cudasim cannot be built: {tool} is missing")
        pytest.skip(f"cudasim needs {tool} to build")
    return load(build())


@pytest.fixture(scope="session")
def sim_devices(cudasim):
    """Every simulated device (different grid sizes, one without cooperative launch)."""
    from sim_device import SimDevice

    return [SimDevice(cudasim, i) for i in range(cudasim.cuda_device_count())]
