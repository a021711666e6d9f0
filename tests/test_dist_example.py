"""examples/fsdp2_clip.py runs as the README says, under torchrun with 2 gloo ranks."""
import os
import subprocess
import sys

from dist_helpers import free_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_fsdp2_example_under_torchrun():
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
           "--master-addr", "127.0.0.1", "--master-port", str(free_port()),
           os.path.join(ROOT, "examples", "fsdp2_clip.py")]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("step ")]
    assert len(lines) == 5, out.stdout
    assert all("(1 collective in the clip)" in ln for ln in lines), out.stdout
