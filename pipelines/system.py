"""What the machine lends this process."""

from __future__ import annotations

import os


def usable_cores() -> int:
    """The CPU cores this process may run on: its affinity mask where the OS has one
    (Linux; a container or ``taskset`` may allow fewer than the machine has), else
    ``os.cpu_count()``; at least 1. Callers apply their own share of it."""
    if hasattr(os, "sched_getaffinity"):
        return max(len(os.sched_getaffinity(0)), 1)
    return os.cpu_count() or 1
