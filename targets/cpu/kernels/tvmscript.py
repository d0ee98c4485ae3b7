"""Parsing text-generated kernels once: ``parse(text)`` is ``tvm.script.from_source`` with a cache.

The Winograd kernels, the LSTM recurrence and the view rewrites are written as TVMScript text and
parsed; parsing is slow (the Winograd output transforms are hundreds of unrolled lines), and models
repeat layer shapes: a YOLOv8-style 640x640 detector generated 35 Winograd scripts, 20 distinct,
and spent half of its 58 s build in the parser. PrimFuncs are immutable, so one parsed function can
serve every layer (and every build in the process) that generates the same text.
"""

from __future__ import annotations

import functools
from typing import Any


@functools.lru_cache(maxsize=512)
def parse(text: str) -> Any:
    """The PrimFunc ``main`` of the TVMScript ``text``."""
    from tvm.script import from_source

    func = from_source(text)
    return func if hasattr(func, "body") else func["main"]


__all__ = ["parse"]
