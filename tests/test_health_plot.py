"""GradMonitor.plot: matplotlib's object API (the process-wide backend and pyplot's figures
are left alone, so notebooks keep their inline figures), and a clear ImportError naming
gradfast's extra when matplotlib is missing."""
import sys

import pytest
import torch

import gradfast


def monitor():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    mon = gradfast.GradMonitor(model, warn=False)
    for _ in range(3):
        model.zero_grad()
        model(torch.randn(2, 4)).sum().backward()
        mon.step(max_norm=0.1)
    return mon


def test_plot_leaves_the_backend_and_pyplot_alone(tmp_path, monkeypatch):
    matplotlib = pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    backend = matplotlib.get_backend()
    figures = plt.get_fignums()

    def refuse(*args, **kwargs):
        raise AssertionError("GradMonitor.plot called matplotlib.use")

    monkeypatch.setattr(matplotlib, "use", refuse)
    path = tmp_path / "norms.png"
    monitor().plot(path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert matplotlib.get_backend() == backend and plt.get_fignums() == figures


def test_plot_without_matplotlib_names_the_extra(tmp_path, monkeypatch):
    mon = monitor()
    for name in list(sys.modules):
        if name == "matplotlib" or name.startswith("matplotlib."):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # "import matplotlib" fails
    with pytest.raises(ImportError, match=r'pip install "gradfast\[bench\]"'):
        mon.plot(tmp_path / "norms.png")
    assert not (tmp_path / "norms.png").exists()
