"""The ``Pass`` base class, ``PassResult`` and the pass / pipeline registry.

A pass is a small class: a kebab-case ``name``, ``lossless`` (output equal up to float rounding), its
options as dataclass fields, and ``run(graph, ctx) -> bool`` (whether it changed the graph)::

    @register_pass
    class FoldDoubleRelu(Pass):
        '''relu(relu(x)) -> relu(x). Lossless.'''
        name = "fold-double-relu"
        lossless = True
        def run(self, graph, ctx) -> bool: ...

Subclasses become dataclasses automatically (writing ``@dataclass`` as well is harmless). The registry
(``_PASSES``, ``_PIPELINES``) lives here and only here; :func:`describe_passes` / :func:`describe_pass`
print it for ``mcopt passes``.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from mcopt.errors import OptionError
from mcopt.ir.core import Graph
from mcopt.pass_manager.context import PassContext


@dataclass
class PassResult:
    """What ``Pass.run`` may return instead of a bool: whether it changed the graph and what it
    wants in its report row (merged with what it recorded through :meth:`PassContext.detail`)."""

    changed: bool
    details: dict[str, Any] = field(default_factory=dict)


# --- pass base class ----------------------------------------------------------------------------------
_RESERVED = ("name", "lossless", "trains", "needs_retraining")


class Pass:
    """Base class of every pass; subclasses are dataclasses whose fields are the pass's options."""

    name: ClassVar[str] = ""
    lossless: ClassVar[bool] = False
    #: the pass trains the graph (finetune, distill, ...)
    trains: ClassVar[bool] = False
    #: without a training pass after it the pass costs most of the accuracy (binary weights, XNOR)
    needs_retraining: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        ann = cls.__dict__.get("__annotations__", {})
        for key in _RESERVED:  # `name: str = "x"` in a subclass is metadata, not an option
            ann.pop(key, None)
        dataclass(cls)

    def run(self, graph: Graph, ctx: PassContext) -> bool:
        raise NotImplementedError(f"pass {self.name!r} does not implement run(graph, ctx)")

    def __call__(self, graph: Graph, ctx: PassContext | None = None) -> bool:
        """Run this pass alone (no verification or report)."""
        return bool(self.run(graph, ctx or PassContext()))

    def options(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}  # type: ignore[arg-type]

    def spec(self) -> str:
        """The spec string that recreates this pass: ``name`` or ``name:opt=v,...``."""
        changed = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)  # type: ignore[arg-type]
            if f.default is dataclasses.MISSING or getattr(self, f.name) != f.default
        }
        if not changed:
            return self.name
        return self.name + ":" + ",".join(f"{k}={_fmt_value(v)}" for k, v in changed.items())


class RewritePass(Pass):
    """A pass that applies a set of rewrite rules to a fixed point
    (:func:`mcopt.rewrite.apply_rewrites`) and logs what they did: a subclass gives
    :meth:`rules` (which may read the pass's options)."""

    def rules(self) -> list[Any]:
        raise NotImplementedError(f"pass {self.name!r} does not implement rules()")

    def run(self, graph: Graph, ctx: PassContext) -> bool:
        from mcopt.rewrite import apply_rewrites

        res = apply_rewrites(graph, self.rules())
        if res.changed:
            ctx.info(f"{self.name}: {res.applied}")
        return res.changed


def _fmt_value(v: Any) -> str:
    if isinstance(v, tuple | list):
        return "[" + ",".join(_fmt_value(x) for x in v) + "]"
    return str(v)


# --- registry -----------------------------------------------------------------------------------------
_PASSES: dict[str, type[Pass]] = {}
_PIPELINES: dict[str, list[str]] = {}
_NAME_RE = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")


def register_pass(cls: type[Pass] | None = None, *, replace: bool = False) -> Any:
    """Class decorator adding a pass to the registry (``@register_pass`` or ``@register_pass(replace=True)``).

    Re-registering a name is an error, except for a redefinition of the same class (same module and
    qualified name, e.g. a re-run notebook cell) or with ``replace=True``."""

    def deco(c: type[Pass]) -> type[Pass]:
        if not (isinstance(c, type) and issubclass(c, Pass)):
            raise OptionError(f"register_pass: {c!r} is not a subclass of mcopt.Pass")
        name = getattr(c, "name", "")
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise OptionError(
                f"pass class {c.__qualname__}: name {name!r} must be kebab-case like 'fold-batch-norm'"
            )
        if name in _PIPELINES:
            raise OptionError(f"pass name {name!r} is already a pipeline name")
        old = _PASSES.get(name)
        same = old is not None and (old.__module__, old.__qualname__) == (
            c.__module__,
            c.__qualname__,
        )
        if old is not None and not (same or replace):
            raise OptionError(
                f"pass {name!r} is already registered by {old.__module__}.{old.__qualname__}; "
                "pick another name or pass replace=True"
            )
        if "__dataclass_fields__" not in c.__dict__:
            dataclass(c)
        _PASSES[name] = c
        return c

    return deco if cls is None else deco(cls)


def register_pipeline(name: str, passes: Sequence[str], *, replace: bool = False) -> None:
    """A name that expands to a list of pass specs (e.g. ``cleanup``)."""
    if not _NAME_RE.match(name):
        raise OptionError(f"pipeline name {name!r} must be kebab-case")
    if name in _PASSES or (name in _PIPELINES and not replace):
        raise OptionError(f"name {name!r} is already registered")
    _PIPELINES[name] = list(passes)


def _load_builtins() -> None:
    import mcopt.passes  # noqa: F401  (registers the built-in passes)


def list_passes() -> list[str]:
    """Names of every registered pass (built-ins and the user's), sorted."""
    _load_builtins()
    return sorted(_PASSES)


def list_pipelines() -> dict[str, list[str]]:
    _load_builtins()
    return {k: list(v) for k, v in sorted(_PIPELINES.items())}


def pass_class(name: str) -> type[Pass]:
    _load_builtins()
    try:
        return _PASSES[name]
    except KeyError:
        known = ", ".join(sorted(_PASSES) + sorted(_PIPELINES))
        raise OptionError(f"unknown pass {name!r}; known passes: {known}") from None


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _option_help(cls: type[Pass]) -> str:
    hints = typing.get_type_hints(cls)
    items = [f"{f.name} ({_type_name(hints.get(f.name, Any))})" for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    return ", ".join(items) if items else "none"


def _summary(doc: str | None) -> str:
    """The first sentence of a docstring's first paragraph."""
    para = " ".join((doc or "").strip().split("\n\n")[0].split())
    head, dot, _ = para.partition(". ")
    return head + "." if dot else para


def describe_passes() -> list[tuple[str, str, str, str]]:
    """(name, lossless, options, first docstring line) for every pass, then every pipeline."""
    rows = []
    for name in list_passes():
        cls = _PASSES[name]
        rows.append(
            (name, "yes" if cls.lossless else "no", _option_help(cls), _summary(cls.__doc__))
        )
    for name, specs in list_pipelines().items():
        rows.append((name, "", "", "pipeline: " + ", ".join(specs)))
    return rows


def describe_pass(name: str) -> str:
    """Everything about one pass (options with their types and defaults, full docstring) or
    pipeline (its passes), for ``mcopt passes NAME``."""
    import inspect

    _load_builtins()
    if name in _PIPELINES:
        return f"{name} (pipeline)\n\n  " + "\n  ".join(_PIPELINES[name])
    cls = pass_class(name)
    hints = typing.get_type_hints(cls)
    lines = [f"{name} ({'lossless' if cls.lossless else 'lossy'})", ""]
    lines.append(inspect.cleandoc(cls.__doc__ or "(no description)"))
    lines += ["", "options:"]
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        default = f.default if f.default is not dataclasses.MISSING else "(required)"
        lines.append(f"  {f.name}: {_type_name(hints.get(f.name, Any))} = {default!r}")
    if len(lines) == 4 + len(inspect.cleandoc(cls.__doc__ or "").splitlines()):
        lines.append("  (none)")
    lines += ["", f"spec: {name}:option=value,option=[a,b]"]
    return "\n".join(lines)
