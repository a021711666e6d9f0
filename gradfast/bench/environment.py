"""Where a run was made: the machine, the software versions and the gradfast commit."""
from __future__ import annotations

import datetime
import os
import platform
import subprocess
import sys
from typing import Any, Dict, Optional

import torch


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def physical_cores() -> Optional[int]:
    """Distinct (physical id, core id) pairs in /proc/cpuinfo; None when unknown."""
    try:
        cores, phys, core = set(), None, None
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "physical id":
                    phys = value.strip()
                elif key == "core id":
                    core = value.strip()
                elif not line.strip():
                    if core is not None:
                        cores.add((phys, core))
                    phys = core = None
        return len(cores) or None
    except OSError:
        return None


def load_average() -> Optional[list]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def cpu_busy_fraction(seconds: float = 1.0) -> Optional[float]:
    """Fraction of all CPUs' time spent busy over `seconds` (from /proc/stat), while this
    process sleeps: what other processes are using. None where /proc/stat is missing."""
    import time

    def sample():
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        return idle, sum(fields[:8])

    try:
        i1, t1 = sample()
        time.sleep(seconds)
        i2, t2 = sample()
    except (OSError, ValueError, IndexError):
        return None
    return 1.0 - (i2 - i1) / (t2 - t1) if t2 > t1 else None


class OtherLoad:
    """Share of the CPUs that other processes used between start() and stop(): the busy
    time in /proc/stat minus this process's own CPU time. None where unavailable."""

    def __init__(self) -> None:
        self._start = self._sample()

    @staticmethod
    def _sample():
        try:
            with open("/proc/stat") as f:
                fields = [int(x) for x in f.readline().split()[1:]]
            tick = os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            return None
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        total = sum(fields[:8])
        own = os.times()
        return (total - idle) / tick, total / tick, own.user + own.system

    def fraction(self) -> Optional[float]:
        end = self._sample()
        if self._start is None or end is None or end[1] <= self._start[1]:
            return None
        busy = end[0] - self._start[0]
        own = end[2] - self._start[2]
        return max(0.0, min(1.0, (busy - own) / (end[1] - self._start[1])))


def git_commit() -> Dict[str, Any]:
    """The commit of the gradfast source tree the bench runs from, if it is a git checkout."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                                text=True, timeout=10)
        if commit.returncode != 0:
            return {"commit": None, "dirty": None}
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                cwd=here, capture_output=True, text=True, timeout=10)
        return {"commit": commit.stdout.strip(),
                "dirty": bool(status.stdout.strip()) if status.returncode == 0 else None}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def describe(device: torch.device) -> Dict[str, Any]:
    import gradfast

    try:
        config = gradfast.show_config()
    except Exception as exc:  # pragma: no cover
        config = {"error": repr(exc)}
    machine: Dict[str, Any] = {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "cpu_model": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "physical_cores": physical_cores(),
        "torch_threads": torch.get_num_threads(),
        "load_average_at_start": load_average(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        machine.update(
            gpu_name=props.name,
            gpu_memory_bytes=props.total_memory,
            gpu_l2_bytes=getattr(props, "L2_cache_size", None),
            gpu_sm_count=props.multi_processor_count,
            gpu_capability=f"{props.major}.{props.minor}",
        )
    else:
        machine["gpu_name"] = (torch.cuda.get_device_name() if torch.cuda.is_available()
                               else None)
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([os.path.basename(sys.executable), "-m", "gradfast.bench"]
                            + sys.argv[1:]),
        "machine": machine,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "gradfast": getattr(gradfast, "__version__", None),
        "git": git_commit(),
        "gradfast_config": config,
    }
