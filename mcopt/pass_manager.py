"""Passes, the pass registry and the pass manager.

A pass is a small class: a kebab-case ``name``, ``lossless`` (output equal up to float rounding), its
options as dataclass fields, and ``run(graph, ctx) -> bool`` (whether it changed the graph)::

    @register_pass
    class FoldDoubleRelu(Pass):
        '''relu(relu(x)) -> relu(x). Lossless.'''
        name = "fold-double-relu"
        lossless = True
        def run(self, graph, ctx) -> bool: ...

Subclasses become dataclasses automatically (writing ``@dataclass`` as well is harmless). Passes are
named in pipelines by spec strings ``"prune-channels:ratio=0.3,min_channels=8"``; option values are
parsed and checked against the field types. :class:`PassManager` runs a pipeline, verifies the IR after
every pass and records a :class:`PassReport`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
import time
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from mcopt.analysis.cost import GraphStats, graph_stats, human_bytes, human_count
from mcopt.errors import MCoptError, OptionError, PassError
from mcopt.ir.core import Graph
from mcopt.ir.verify import verify

Feed = Mapping[str, np.ndarray] | Sequence[np.ndarray]
_log = logging.getLogger("mcopt.passes")


@dataclass
class PassResult:
    """What ``Pass.run`` may return instead of a bool: whether it changed the graph and what it
    wants in its report row (merged with what it recorded through :meth:`PassContext.detail`)."""

    changed: bool
    details: dict[str, Any] = field(default_factory=dict)


class TargetServices(typing.Protocol):
    """What a pass may ask of the compile target (implemented in ``mcopt.targets``; the core
    defines only the protocol): ``measure_winograd(...) -> {"direct": ms, "f2": ms, "f4": ms}``
    times a 3x3 conv's kernels on the target (see :mod:`mcopt.passes.winograd`)."""

    name: str

    def measure_winograd(self, *args: Any, **kwargs: Any) -> dict[str, float]: ...


# --- context ----------------------------------------------------------------------------------------
@dataclass
class PassContext:
    """What a pass may use besides the graph.

    - ``calib``: calibration feeds (each a dict name -> array, or a list of arrays in input order).
    - ``seed``: seed for any randomness; use :meth:`rng`.
    - ``log``: message sink (default: the ``mcopt.passes`` logger at INFO).
    - ``progress``: ``progress(index, total, pass_name, done)`` called around every pass.
    - ``shared``: results passes hand to later passes (e.g. a sensitivity analysis).
    - ``data``: labelled (or unlabelled) training data with its held-out validation split
      (:class:`mcopt.train.TrainData`), for the training passes; None without.
    - ``teacher``: the model the pipeline started from (the original), the default teacher of
      distillation; set by :class:`PassManager` when None.
    - ``details``: what the running pass wants in its report row (:meth:`detail`); the manager
      resets it before each pass and keeps it in :attr:`PassRecord.details`.
    """

    calib: list[Feed] | None = None
    seed: int = 0
    log: Callable[[str], None] | None = None
    progress: Callable[[int, int, str, bool], None] | None = None
    shared: dict[str, Any] = field(default_factory=dict)
    data: Any = None
    teacher: Graph | None = None
    details: dict[str, Any] = field(default_factory=dict)
    #: the compile target's services (None: not compiling), see :class:`TargetServices`
    target: TargetServices | None = None
    #: inputs no pass may fit (the output-error check's): passes that choose between methods by
    #: data (refit or not, GPTQ or round-to-nearest) compare them here, see :meth:`heldout_error`
    heldout: list[Feed] = field(default_factory=list)

    def heldout_error(self, graph: Graph) -> float | None:
        """Max relative output error of `graph` against the teacher on the held-out inputs
        (None without held-out inputs or a teacher)."""
        if not self.heldout or self.teacher is None:
            return None
        from mcopt import interpreter

        worst = 0.0
        for feed in self.heldout:
            _, rel = output_errors(
                interpreter.run(self.teacher, feed), interpreter.run(graph, feed)
            )  # type: ignore[arg-type]
            worst = max(worst, rel)
        return worst

    def detail(self, key: str, value: Any) -> None:
        """Record `key: value` in the running pass's report row (JSON-serializable values)."""
        self.details[key] = value

    def rng(self, salt: int = 0) -> np.random.Generator:
        """A fresh generator seeded from ``seed`` (and `salt`, so passes draw independent streams)."""
        return np.random.default_rng([self.seed, salt])

    def info(self, msg: str) -> None:
        if self.log is not None:
            self.log(msg)
        else:
            _log.info(msg)

    def feeds(self, limit: int | None = None) -> list[Feed]:
        feeds = list(self.calib or [])
        return feeds if limit is None else feeds[:limit]


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


# --- option parsing -----------------------------------------------------------------------------------
def _split_top(s: str, sep: str = ",") -> list[str]:
    """Split on `sep` outside brackets/parentheses."""
    out, depth, cur = [], 0, []
    for ch in s:
        if ch in "[(":
            depth += 1
        elif ch in "])":
            depth -= 1
        if ch == sep and depth == 0:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    out.append("".join(cur))
    return [p.strip() for p in out if p.strip()]


_TRUE, _FALSE = {"true", "yes", "on", "1"}, {"false", "no", "off", "0"}


def _coerce(value: Any, tp: Any) -> Any:
    """`value` as type `tp` (strings from spec strings are parsed); ValueError when it does not fit."""
    if tp is Any:
        return value
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union or origin is types.UnionType:
        if value is None or (isinstance(value, str) and value.lower() == "none"):
            if type(None) in args:
                return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a)
            except ValueError:
                continue
        raise ValueError
    if origin is typing.Literal:
        for a in args:
            if value == a or (isinstance(value, str) and str(a) == value):
                return a
        raise ValueError
    if origin in (tuple, list):
        if isinstance(value, str):
            v = value.strip()
            if v[:1] in "[(" and v[-1:] in "])":
                v = v[1:-1]
            value = _split_top(v, ",") if "," in v else ([v] if v else [])
        if not isinstance(value, list | tuple):
            value = [value]
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(x, args[0]) for x in value)
        if origin is tuple and args:
            if len(args) != len(value):
                raise ValueError
            return tuple(_coerce(x, a) for x, a in zip(value, args))
        conv = [_coerce(x, args[0]) if args else x for x in value]
        return tuple(conv) if origin is tuple else conv
    if tp is bool:
        if isinstance(value, bool | np.bool_):
            return bool(value)
        if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
            return value.lower() in _TRUE
        raise ValueError
    if tp is int:
        if isinstance(value, bool):
            raise ValueError
        if isinstance(value, int | np.integer):
            return int(value)
        if isinstance(value, str):
            return int(value)
        raise ValueError
    if tp is float:
        if isinstance(value, bool):
            raise ValueError
        if isinstance(value, int | float | np.integer | np.floating):
            return float(value)
        if isinstance(value, str):
            return float(value)
        raise ValueError
    if tp is str:
        if isinstance(value, str):
            return value
        raise ValueError
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ValueError
    return value


def get_pass(name: str, **options: Any) -> Pass:
    """An instance of the pass `name` with `options` checked against its fields (OptionError if bad)."""
    cls = pass_class(name)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    for key, value in options.items():
        k = key.replace("-", "_")
        if k not in fields:
            raise OptionError(
                f"pass {name!r} has no option {key!r}; valid options: {_option_help(cls)}"
            )
        tp = hints.get(k, Any)
        try:
            kwargs[k] = _coerce(value, tp)
        except (ValueError, TypeError):
            raise OptionError(
                f"pass {name!r}: option {k!r} expects {_type_name(tp)}, got {value!r}; "
                f"valid options: {_option_help(cls)}"
            ) from None
    missing = [
        f
        for f, fd in fields.items()
        if f not in kwargs
        and fd.default is dataclasses.MISSING
        and fd.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise OptionError(f"pass {name!r} needs option(s) {missing}; options: {_option_help(cls)}")
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as e:  # a __post_init__ range check
        raise OptionError(f"pass {name!r}: {e}") from None


def parse_spec(spec: str) -> tuple[str, dict[str, str]]:
    """``"prune-channels:ratio=0.3,skip=[conv1,conv2]"`` -> ("prune-channels", {"ratio": "0.3", ...})."""
    name, _, rest = spec.strip().partition(":")
    opts: dict[str, str] = {}
    for item in _split_top(rest, ","):
        key, eq, val = item.partition("=")
        if not eq or not key.strip():
            raise OptionError(f"pass spec {spec!r}: option {item!r} must look like key=value")
        opts[key.strip()] = val.strip()
    return name.strip(), opts


_OPTION_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*=")


def split_pipeline(text: str) -> list[str]:
    """A comma-separated pipeline -> pass specs, bracket-aware, with ``key=value`` pieces kept with
    the pass before them: ``"cleanup,prune-channels:ratio=0.3,skip=[a,b],finetune:epochs=2"`` ->
    ``["cleanup", "prune-channels:ratio=0.3,skip=[a,b]", "finetune:epochs=2"]``."""
    out: list[str] = []
    for piece in _split_top(text, ","):
        if _OPTION_RE.match(piece) and ":" not in piece.split("=", 1)[0]:
            if not out or ":" not in out[-1]:
                raise OptionError(
                    f"pipeline {text!r}: option {piece!r} follows no 'pass:option=value' spec"
                )
            out[-1] += "," + piece
        else:
            out.append(piece)
    return out


PassLike = str | Pass | type[Pass]


def resolve_passes(passes: Sequence[PassLike] | PassLike) -> list[Pass]:
    """Spec strings, pipeline names, pass classes and instances -> pass instances (pipelines expanded)."""
    if isinstance(passes, str | Pass) or isinstance(passes, type):
        passes = [passes]
    out: list[Pass] = []
    for p in passes:
        if isinstance(p, Pass):
            out.append(p)
        elif isinstance(p, type) and issubclass(p, Pass):
            out.append(p())
        elif isinstance(p, str):
            name, opts = parse_spec(p)
            _load_builtins()
            if name in _PIPELINES:
                if opts:
                    raise OptionError(f"pipeline {name!r} takes no options (got {p!r})")
                out.extend(resolve_passes(_PIPELINES[name]))
            else:
                out.append(get_pass(name, **opts))
        else:
            raise OptionError(f"not a pass: {p!r} (give a name, a spec string or a Pass)")
    return out


# --- report ---------------------------------------------------------------------------------------------
@dataclass
class PassRecord:
    """What one pass did."""

    name: str
    spec: str
    lossless: bool
    changed: bool
    seconds: float
    before: GraphStats
    after: GraphStats
    max_abs_err: float | None = None
    max_rel_err: float | None = None
    #: held-out metric after the pass (accuracy with labels, agreement with the teacher without)
    metric: float | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class PassReport:
    """Per-pass records of one pipeline run, plus the input graph's stats."""

    initial: GraphStats
    records: list[PassRecord] = field(default_factory=list)
    seconds: float = 0.0
    #: held-out metric of the input graph, its name and sample count (None without data)
    initial_metric: float | None = None
    metric_name: str | None = None
    metric_samples: int = 0

    @property
    def final(self) -> GraphStats:
        return self.records[-1].after if self.records else self.initial

    @property
    def changed(self) -> bool:
        return any(r.changed for r in self.records)

    @property
    def final_metric(self) -> float | None:
        """The held-out metric after the last pass (None without data)."""
        for r in reversed(self.records):
            if r.metric is not None:
                return r.metric
        return self.initial_metric

    def __getitem__(self, name: str) -> PassRecord:
        for r in self.records:
            if r.name == name:
                return r
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "initial": self.initial.to_dict(),
            "final": self.final.to_dict(),
            "seconds": self.seconds,
            "metric": None
            if self.metric_name is None
            else {
                "name": self.metric_name,
                "held_out_samples": self.metric_samples,
                "initial": self.initial_metric,
            },
            "passes": [r.to_dict() for r in self.records],
        }

    @property
    def headers(self) -> tuple[str, ...]:
        if self.metric_name is None:
            return self._HEADERS
        return (*self._HEADERS, f"held-out {self.metric_name}")

    _HEADERS = (
        "pass",
        "changed",
        "time",
        "nodes",
        "params",
        "weights",
        "MACs",
        "max abs err",
        "max rel err",
    )

    def rows(self) -> list[list[str]]:
        """The table's rows as strings: the input, then one per pass (see :attr:`headers`)."""

        def err(x: float | None) -> str:
            return "" if x is None else f"{x:.3g}"

        rows = [
            [
                "(input)",
                "",
                "",
                str(self.initial.nodes),
                human_count(self.initial.params),
                human_bytes(self.initial.weight_bytes),
                human_count(self.initial.macs),
                "",
                "",
            ]
        ]
        if self.metric_name is not None:
            rows[0].append(err(self.initial_metric))
        for r in self.records:
            rows.append(
                [
                    r.spec,
                    "yes" if r.changed else "no",
                    f"{r.seconds * 1e3:.1f} ms",
                    str(r.after.nodes),
                    human_count(r.after.params),
                    human_bytes(r.after.weight_bytes),
                    human_count(r.after.macs),
                    err(r.max_abs_err),
                    err(r.max_rel_err),
                ]
            )
            if self.metric_name is not None:
                rows[-1].append(err(r.metric))
        return rows

    def table(self) -> Any:
        from rich.table import Table

        t = Table(title=f"passes ({self.seconds:.2f} s)")
        for i, h in enumerate(self.headers):
            t.add_column(h, justify="left" if i < 2 else "right")
        for row in self.rows():
            t.add_row(*row)
        return t

    def __rich__(self) -> Any:
        return self.table()

    def to_markdown(self) -> str:
        lines = [
            "| " + " | ".join(self.headers) + " |",
            "|" + "|".join(["---"] * 2 + ["---:"] * (len(self.headers) - 2)) + "|",
        ]
        lines += ["| " + " | ".join(row) + " |" for row in self.rows()]
        if self.metric_name is not None:
            lines += [
                "",
                f"Held-out {self.metric_name}: measured on {self.metric_samples} samples of the "
                "training data's validation split, which no pass trained or fitted on.",
            ]
        details = [(r.spec, r.details) for r in self.records if r.details]
        if details:
            lines += ["", "Pass details:", ""]
            lines += [f"- `{spec}`: {_fmt_details(d)}" for spec, d in details]
        by = ", ".join(f"{k}: {human_bytes(v)}" for k, v in self.final.bytes_by_dtype.items())
        lines += ["", f"Weights by storage after the last pass: {by or 'none'}."]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_markdown()


def _summary_details(summary: Any) -> dict[str, Any]:
    """The report-worthy part of a pass's per-layer summary (``mcopt.analysis.lowrank.summarize``):
    the rank (or method) chosen per layer and why layers were skipped."""
    if not isinstance(summary, Mapping) or "layers" not in summary:
        return {}
    out: dict[str, Any] = {}
    layers = {
        str(r.get("layer")): (r.get("rank") if r.get("rank") is not None else r.get("method"))
        for r in summary.get("layers") or []
        if isinstance(r, Mapping)
    }
    if layers:
        out["layers"] = layers
    if summary.get("skipped"):
        out["skipped"] = dict(summary["skipped"])
    return out


def _fmt_details(d: Mapping[str, Any]) -> str:
    parts = []
    for k, v in d.items():
        if isinstance(v, float):
            v = f"{v:.4g}"
        elif isinstance(v, dict):
            v = (
                "{"
                + ", ".join(
                    f"{a}: {b:.4g}" if isinstance(b, float) else f"{a}: {b}" for a, b in v.items()
                )
                + "}"
            )
        parts.append(f"{k} {v}")
    return "; ".join(parts)


# --- manager --------------------------------------------------------------------------------------------
def _as_feeds(inputs: Any) -> list[Feed]:
    """One feed (dict or list of arrays) or a list of dict feeds -> a list of feeds."""
    if inputs is None:
        return []
    if isinstance(inputs, Mapping) or isinstance(inputs, np.ndarray):
        return [inputs if isinstance(inputs, Mapping) else [inputs]]
    items = list(inputs)
    if items and all(isinstance(x, Mapping) for x in items):
        return items
    return [items]


def output_errors(ref: Sequence[np.ndarray], got: Sequence[np.ndarray]) -> tuple[float, float]:
    """(max abs error, max error relative to the reference output's largest finite magnitude).

    NaN / Inf aware: positions where both hold the same non-finite value (NaN and NaN, +Inf and
    +Inf) agree; a non-finite value on one side only is an infinite error (Python's ``max`` would
    silently drop a NaN)."""
    if len(ref) != len(got):
        raise MCoptError(f"the graph now has {len(got)} outputs, the original {len(ref)}")
    max_abs = max_rel = 0.0
    for r, g in zip(ref, got):
        r64, g64 = np.asarray(r, np.float64), np.asarray(g, np.float64)
        if r64.shape != g64.shape:
            raise MCoptError(f"output shape changed: {list(r64.shape)} -> {list(g64.shape)}")
        if not r64.size:
            continue
        fr, fg = np.isfinite(r64), np.isfinite(g64)
        same_nonfinite = (~fr & ~fg) & ((np.isnan(r64) & np.isnan(g64)) | (r64 == g64))
        if np.any((fr != fg) | (~fr & ~fg & ~same_nonfinite)):
            return math.inf, math.inf
        both = fr & fg
        if not both.any():
            continue
        d = float(np.max(np.abs(r64[both] - g64[both])))
        scale = float(np.max(np.abs(r64[both])))
        max_abs = max(max_abs, d)
        max_rel = max(max_rel, d / scale if scale > 0 else d)
    return max_abs, max_rel


class PassManager:
    """Runs a pipeline of passes, verifying the IR after each and recording a :class:`PassReport`.

    Output error is measured after each pass against the ORIGINAL graph's outputs when reference
    `inputs` are given to :meth:`run` (else on the first `error_samples` calibration feeds of the
    context when ``measure_error`` is True); a pass that claims to be lossless but moves the outputs
    by more than `lossless_rtol` (relative) gets a warning in the context's log."""

    def __init__(
        self,
        passes: Sequence[PassLike] | PassLike,
        *,
        verify_each: bool = True,
        measure_error: bool = False,
        error_samples: int = 1,
        lossless_rtol: float = 1e-4,
    ) -> None:
        self.passes = resolve_passes(passes)
        self.verify_each = verify_each
        self.measure_error = measure_error
        self.error_samples = error_samples
        self.lossless_rtol = lossless_rtol

    def run(
        self,
        graph: Graph,
        ctx: PassContext | None = None,
        inputs: Any = None,
        *,
        copy: bool = False,
    ) -> tuple[Graph, PassReport]:
        """Run every pass on `graph` (in place, or on a copy when `copy`); return (graph, report).

        Raises PassError "pass 'x' failed after [a, b]: reason" when a pass raises, leaves an invalid
        graph, or leaves a graph the reference interpreter cannot run."""
        from mcopt import interpreter

        ctx = ctx or PassContext()
        if copy:
            graph = graph.copy()
        if ctx.teacher is None:
            ctx.teacher = graph.copy()
        feeds = _as_feeds(inputs)
        if not feeds and self.measure_error:
            feeds = ctx.feeds(self.error_samples)
        refs = [interpreter.run(graph, f) for f in feeds]  # type: ignore[arg-type]
        report = PassReport(initial=graph_stats(graph))
        metric = self._metric_fn(graph, ctx, report)
        io_names = ([v.name for v in graph.inputs], [v.name for v in graph.outputs])
        done: list[str] = []
        t_all = time.perf_counter()
        total = len(self.passes)
        for i, p in enumerate(self.passes):
            if ctx.progress is not None:
                ctx.progress(i, total, p.name, False)
            before = report.final
            ctx.details = {}
            t0 = time.perf_counter()
            try:
                result = p.run(graph, ctx)
                seconds = time.perf_counter() - t0
                graph.restore_io_names(*io_names)  # outputs keep the names users call them by
                if self.verify_each:
                    verify(graph)
                errs = [output_errors(r, interpreter.run(graph, f)) for r, f in zip(refs, feeds)]  # type: ignore[arg-type]
                after = graph_stats(graph)
            except Exception as e:
                reason = str(e) if isinstance(e, MCoptError) else f"{type(e).__name__}: {e}"
                raise PassError(
                    f"pass {p.name!r} failed after [{', '.join(done)}]: {reason}"
                ) from e
            if result is None:
                raise PassError(
                    f"pass {p.name!r} returned None: its run() must return True / False (changed "
                    "or not) or a PassResult"
                )
            details = dict(ctx.details)
            if isinstance(result, PassResult):
                details.update(result.details)
                result = result.changed
            details.update(_summary_details(ctx.shared.get(p.name)))
            rec = PassRecord(
                name=p.name,
                spec=p.spec(),
                lossless=p.lossless,
                changed=bool(result),
                seconds=seconds,
                before=before,
                after=after,
                max_abs_err=max((a for a, _ in errs), default=None) if errs else None,
                max_rel_err=max((r for _, r in errs), default=None) if errs else None,
                details=details,
            )
            if metric is not None:
                last = report.records[-1].metric if report.records else report.initial_metric
                rec.metric = metric(graph) if rec.changed and not rec.lossless else last
            if rec.lossless and rec.max_rel_err is not None and not math.isfinite(rec.max_rel_err):
                raise PassError(
                    f"pass {p.name!r} claims to be lossless but made an output non-finite "
                    f"(NaN / Inf where the original is finite, or the reverse) after [{', '.join(done)}]"
                )
            if rec.lossless and (rec.max_rel_err or 0.0) > self.lossless_rtol:
                ctx.info(
                    f"warning: pass {p.name!r} claims to be lossless but changed the outputs by "
                    f"{rec.max_rel_err:.3g} (relative)"
                )
            report.records.append(rec)
            done.append(p.name)
            ctx.info(
                f"{p.spec()}: {'changed' if rec.changed else 'no change'} in {seconds * 1e3:.1f} ms"
            )
            if ctx.progress is not None:
                ctx.progress(i, total, p.name, True)
        report.seconds = time.perf_counter() - t_all
        return graph, report

    @staticmethod
    def _metric_fn(
        graph: Graph, ctx: PassContext, report: PassReport
    ) -> Callable[[Graph], float] | None:
        """With training data in the context: the held-out metric of the input graph (into
        `report`) and a function giving it for a later graph."""
        data = ctx.data
        if data is None or not getattr(data, "n_val", 0):
            return None
        from mcopt.train.heldout import held_out_metric, predictions

        teacher_pred = None
        if data.val_y is None:
            teacher_pred = predictions(ctx.teacher or graph, data.val_x)

        def metric(g: Graph) -> float:
            return held_out_metric(g, data.val_x, data.val_y, teacher_pred)[1]

        name, value = held_out_metric(graph, data.val_x, data.val_y, teacher_pred)
        report.metric_name, report.initial_metric, report.metric_samples = name, value, data.n_val
        return metric


def run_passes(
    graph: Graph,
    passes: Sequence[PassLike] | PassLike,
    ctx: PassContext | None = None,
    inputs: Any = None,
    *,
    copy: bool = False,
) -> tuple[Graph, PassReport]:
    """Shorthand for ``PassManager(passes).run(graph, ctx, inputs, copy=copy)``."""
    return PassManager(passes).run(graph, ctx, inputs, copy=copy)


def rich_progress_callback(progress: Any) -> Callable[[int, int, str, bool], None]:
    """A ``PassContext.progress`` callback driving a ``rich.progress.Progress`` (one task per run)."""
    state: dict[str, Any] = {}

    def cb(index: int, total: int, name: str, done: bool) -> None:
        if "task" not in state:
            state["task"] = progress.add_task("passes", total=total)
        progress.update(state["task"], description=f"pass {name}", completed=index + int(done))

    return cb
