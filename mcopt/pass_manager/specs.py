"""Pass specs and pipelines: parsing ``"prune-channels:ratio=0.3,skip=[a,b]"`` (option values checked
against the pass's field types), splitting a comma-separated pipeline into specs, and resolving
specs, pipeline names, classes and instances into pass instances."""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Sequence
from typing import Any

import numpy as np

from mcopt.errors import OptionError
from mcopt.pass_manager.base import (
    _PIPELINES,
    Pass,
    _load_builtins,
    _option_help,
    _type_name,
    pass_class,
)


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
