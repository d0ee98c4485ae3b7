"""Data-movement ops: reshape, flatten, transpose, squeeze/unsqueeze, concat, pad, identity."""

from __future__ import annotations
