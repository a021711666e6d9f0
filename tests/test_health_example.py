"""examples/rnn_exploding.py --short runs end to end (the CI smoke test of the demo)."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_rnn_example_short_mode(tmp_path):
    png = tmp_path / "short.png"
    env = dict(os.environ)
    # The gradfast this process imported (the installed wheel in CI), not the source tree.
    import gradfast

    pkg_parent = os.path.dirname(os.path.dirname(os.path.abspath(gradfast.__file__)))
    env["PYTHONPATH"] = os.pathsep.join([pkg_parent, env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "rnn_exploding.py"), "--short", "--plot", str(png)],
        capture_output=True, text=True, timeout=60, env=env, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "optimizer:" in out
    rows = [line for line in out.splitlines() if line.startswith("| RNN") or line.startswith("| LSTM")]
    assert len(rows) == 10, out
    for method in ("none", "fixed", "autoclip", "agc", "sgd"):
        assert sum(f"| {method} |" in r for r in rows) == 2
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
