"""Errors mcopt raises. Every message is one line that names the node/option/file and says what to do."""

from __future__ import annotations


class MCoptError(Exception):
    """Base class: a user-facing error with a one-line message."""


class ModelLoadError(MCoptError):
    """The model file could not be read (missing, truncated, not ONNX)."""


class NonFiniteError(ModelLoadError):
    """The model's weights make its outputs non-finite: NaN / Inf in a weight, a negative
    BatchNormalization running variance, a constant divisor holding 0. The message names the tensor;
    ``allow_nonfinite=True`` (CLI ``--allow-nonfinite``) imports such a model with a warning."""


class NonFiniteWarning(UserWarning):
    """What ``allow_nonfinite=True`` turns a :class:`NonFiniteError` into (one per tensor)."""


class UnsupportedOpError(MCoptError):
    """The model uses an operator mcopt cannot import or lower."""


class ShapeError(MCoptError):
    """Shapes do not fit: an unknown dim without a user shape, or mismatched inputs."""


class VerifyError(MCoptError):
    """The IR is not valid (broken use-def chains, bad types, unknown ops, cycles)."""


class PassError(MCoptError):
    """A pass failed; the message names the pass and the passes that ran before it."""


class OptionError(MCoptError):
    """A bad option value (unknown pass, target, attribute, ...)."""


class TargetError(MCoptError):
    """Lowering or building for a target failed."""


class TuningDatabaseError(TargetError):
    """A tuning database directory holds a line TVM must not read (names the file, the line and
    what is wrong); ``repair=True`` (``mcopt tune --repair``, ``mcopt optimize --repair-db``)
    rewrites it without the bad lines."""


class BudgetError(MCoptError):
    """The result is outside the user's accuracy / output-error budget; names the pass that broke
    it. Nothing is written."""
