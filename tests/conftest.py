"""Test-wide settings.

The CPU build picks Winograd per 3x3 layer by timing it on this machine (cached per machine):
tests would then depend on timings taken under the parallel test load. They build with the direct
conv unless they ask otherwise (``MCOPT_WINOGRAD``: ``off`` here; tests/test_winograd_nchwc.py
forces ``2`` / ``4`` and checks ``auto`` against a prepared table).
"""

from __future__ import annotations

import os

os.environ.setdefault("MCOPT_WINOGRAD", "off")
