"""How many threads mcopt's CPU code runs on (TVM-free: it only sets an environment variable).

TVM sizes its thread pool once, when the first parallel loop runs, from ``TVM_NUM_THREADS`` (or
``OMP_NUM_THREADS``), else from ``std::thread::hardware_concurrency() / 2`` on x86 -- it assumes
two hardware threads per core. On machines without SMT (most cloud VMs expose each vCPU as a core:
the 2-core dev machine reports ``Thread(s) per core: 1``) that halves the pool: every compiled model
ran on one of the two cores unless the user set ``TVM_NUM_THREADS`` (MobileNet-V2 9.3 ms instead of
4.7 ms). :func:`configure_threads` runs when :mod:`mcopt.targets` is imported, before any kernel,
and sets ``TVM_NUM_THREADS`` to :func:`physical_cores` unless the user chose a value.
"""

from __future__ import annotations

import os
from pathlib import Path

#: the environment variables that already choose the pool size (left alone when set)
THREAD_ENV = ("TVM_NUM_THREADS", "OMP_NUM_THREADS")


def _cpus() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return list(range(os.cpu_count() or 1))


def physical_cores() -> int:
    """Physical cores this process may run on: the CPUs of its affinity mask, counted once per
    set of SMT siblings (Linux ``/sys/devices/system/cpu/cpuN/topology/thread_siblings_list``);
    the CPU count where the topology is not readable."""
    cpus = _cpus()
    sibling_sets: set[str] = set()
    for cpu in cpus:
        path = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list")
        try:
            sibling_sets.add(path.read_text().strip())
        except OSError:
            return max(1, len(cpus))
    return max(1, len(sibling_sets))


def configure_threads() -> int | None:
    """Set ``TVM_NUM_THREADS`` to :func:`physical_cores` unless ``TVM_NUM_THREADS`` or
    ``OMP_NUM_THREADS`` is set; returns the value set (None when the user's choice stands)."""
    if any(os.environ.get(k, "").strip() for k in THREAD_ENV):
        return None
    n = physical_cores()
    os.environ["TVM_NUM_THREADS"] = str(n)
    return n


__all__ = ["THREAD_ENV", "configure_threads", "physical_cores"]
