"""Silence TVM's native console noise (``Warning: Scope Saving:`` / ``Scope Loaded:`` lines from the
VM executable's serializer) around calls that are known to print it. Errors still reach the user:
TVM raises them as Python exceptions with their message, which this does not touch."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator


@contextlib.contextmanager
def quiet_native_stderr() -> Iterator[None]:
    """Redirect file descriptor 2 to /dev/null for the duration (C++ logging writes there
    directly, below Python's sys.stderr); a no-op where fd 2 cannot be duplicated."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):
        yield
        return
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
            try:
                yield
            finally:
                os.dup2(saved, 2)
    finally:
        os.close(saved)


__all__ = ["quiet_native_stderr"]
