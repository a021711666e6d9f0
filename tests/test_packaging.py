"""The installed distribution's metadata: what `pip install gradfast` brings along."""
from importlib import metadata

import pytest
from packaging.requirements import Requirement


def _requirements():
    try:
        reqs = metadata.requires("gradfast")
    except metadata.PackageNotFoundError:
        pytest.skip("gradfast is not installed as a distribution (no metadata)")
    return [Requirement(r) for r in reqs or []]


def test_runtime_requirements_are_torch_and_numpy_only():
    runtime = {str(r) for r in _requirements() if r.marker is None}
    assert runtime == {"torch>=2.4", "numpy"}


def test_plotting_and_progress_bar_are_the_bench_extra():
    bench = {r.name for r in _requirements()
             if r.marker is not None and r.marker.evaluate({"extra": "bench"})
             and not r.marker.evaluate({"extra": ""})}
    assert {"matplotlib", "tqdm"} <= bench
