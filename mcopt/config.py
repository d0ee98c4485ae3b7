"""Pipeline files for ``mcopt optimize --config FILE``: YAML or JSON with any of ``target``,
``passes`` (a list of specs or one comma-separated string), ``calib``, ``data``, ``val_data``,
``input_shapes`` ({name: [dims]}), ``input_values`` ({name: value}: inputs fixed as constants),
``seed``, ``db``, ``max_accuracy_drop``, ``max_output_error``,
``objective``. A ``report.json`` written by ``mcopt optimize`` replays that run: its passes (the spec
of each pass as run), target, input shapes and fixed input values. Unknown keys are an error naming them."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from mcopt.errors import OptionError

KEYS = {
    "target", "passes", "calib", "data", "val_data", "input_shapes", "input_values", "seed", "db",
    "max_accuracy_drop", "max_output_error", "objective",
}  # fmt: skip


def load_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The options in `path` (see the module docstring), checked."""
    p = Path(path)
    if not p.exists():
        raise OptionError(f"--config {str(p)!r} does not exist")
    text = p.read_text()
    try:
        if p.suffix in (".yaml", ".yml"):
            import yaml

            raw = yaml.safe_load(text)
        else:
            raw = json.loads(text)
    except Exception as e:  # yaml.YAMLError / json.JSONDecodeError
        raise OptionError(
            f"--config {str(p)!r} is not valid {p.suffix[1:] or 'JSON'}: {str(e).splitlines()[0]}"
        ) from None
    if not isinstance(raw, dict):
        raise OptionError(
            f"--config {str(p)!r} must hold a mapping of options, got {type(raw).__name__}"
        )
    if isinstance(raw.get("passes"), dict) and "passes" in raw["passes"]:
        return _from_report(raw)
    unknown = sorted(set(raw) - KEYS)
    if unknown:
        raise OptionError(
            f"--config {str(p)!r}: unknown option(s) {unknown}; known: {sorted(KEYS)}"
        )
    cfg = dict(raw)
    passes = cfg.get("passes")
    if isinstance(passes, str):
        from mcopt.pass_manager import split_pipeline

        cfg["passes"] = split_pipeline(passes)
    elif passes is not None and not (
        isinstance(passes, list) and all(isinstance(x, str) for x in passes)
    ):
        raise OptionError(f"--config {str(p)!r}: passes must be a list of pass specs or a string")
    for key in ("calib", "data", "val_data", "db"):  # paths are relative to the config file
        if isinstance(cfg.get(key), str) and not Path(cfg[key]).is_absolute():
            cfg[key] = str(p.parent / cfg[key])
    return cfg


def _from_report(rep: dict[str, Any]) -> dict[str, Any]:
    """Replay a report.json: the passes as they ran (cleanup's sub-passes included), target, shapes."""
    specs = [r["spec"] for r in rep["passes"]["passes"]]
    cfg: dict[str, Any] = {"passes": specs or ["cleanup"], "target": rep.get("target")}
    if rep.get("inputs"):
        cfg["input_shapes"] = {k: list(v) for k, v in rep["inputs"].items()}
    if rep.get("input_values"):
        cfg["input_values"] = dict(rep["input_values"])
    return cfg


__all__ = ["KEYS", "load_config"]
