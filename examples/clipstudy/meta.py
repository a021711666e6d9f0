"""Where and with what the study ran: commit, machine, versions, load."""
from __future__ import annotations

import os
import platform
import subprocess
import sys
import time

import torch

import gradfast


def _git(args, cwd):
    try:
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True,
                              timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> str:
    try:
        return "/".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def collect(repo_dir: str) -> dict:
    cpus = os.cpu_count()
    mem_gib = None
    try:
        mem_gib = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    return {
        "commit": _git(["rev-parse", "HEAD"], repo_dir) or "unknown",
        "dirty": bool(_git(["status", "--porcelain", "--untracked-files=no"], repo_dir)),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": {"cpu": _cpu_model(), "logical_cpus": cpus, "memory_gib": mem_gib,
                    "platform": platform.platform(),
                    "description": f"{_cpu_model()}, {cpus} logical CPUs, {mem_gib} GiB, "
                                   "shared with other jobs"},
        "python": sys.version.split()[0], "torch": torch.__version__,
        "gradfast": getattr(gradfast, "__version__", "unknown"),
    }
