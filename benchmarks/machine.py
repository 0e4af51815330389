"""What machine a benchmark ran on, in one line for its printed results (imported by the bench_*.py scripts,
which run from this folder)."""

from __future__ import annotations

import os
import platform
import subprocess


def describe_machine() -> str:
    """CPU model, usable cores, memory and kernel, e.g. "AMD EPYC 9B14, 2 usable cores, 23 GiB RAM, Linux 6.18"."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        model = next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")), "?")
    except (OSError, subprocess.CalledProcessError):
        model = platform.processor() or "?"
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{model}, {len(os.sched_getaffinity(0))} usable cores, {memory:.0f} GiB RAM, Linux {platform.release()}"
