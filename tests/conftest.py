"""Test-wide settings.

The CPU build picks Winograd per 3x3 layer by timing it on this machine (cached per machine):
tests would then depend on timings taken under the parallel test load. They build with the direct
conv unless they ask otherwise (``MCOPT_WINOGRAD``: ``off`` here; tests/test_winograd_nchwc.py
forces ``2`` / ``4`` and checks ``auto`` against a prepared table).

Each test worker runs TVM kernels on one thread (``TVM_NUM_THREADS=1``: ``pytest -n 2`` on two
cores would otherwise run four spinning pool threads); tests/test_host_threads.py runs a model on
the default pool (all physical cores) in a fresh process.
"""

from __future__ import annotations

import os

os.environ.setdefault("MCOPT_WINOGRAD", "off")
os.environ.setdefault("TVM_NUM_THREADS", "1")
