"""A benchmark worker's own peak resident memory (stdlib only: the peers' virtual environments
import it too)."""

from __future__ import annotations

import resource
from pathlib import Path


def peak_rss_mb() -> float:
    """This process's peak resident memory, MB: ``VmHWM`` of its own address space.

    ``ru_maxrss`` is not it on Linux: execve keeps the larger of the old and the new address
    space's peak, so a worker forked from a parent holding 1.5 GB reports at least 1.5 GB.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
