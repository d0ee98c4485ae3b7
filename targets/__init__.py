"""Code generation with Apache TVM: target registry, lowering mcopt IR to Relax, build, run.

Importing ``mcopt.targets`` does not import TVM (it costs ~3 s and ~400 MB): the registry is
TVM-free and the rest is loaded on first use of :func:`build`, :func:`lower`, ...
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

from mcopt.targets.cpu.host_threads import configure_threads
from mcopt.targets.registry import TargetSpec, get_target, register_target, target_names

configure_threads()  # TVM's default pool is half the cores on x86 without SMT (host_threads.py)

_LAZY: dict[str, str] = {
    "CompiledModel": "mcopt.targets.relax.builder",
    "load_library": "mcopt.targets.relax.builder",
    "compile_module": "mcopt.targets.relax.builder",
    "lower": "mcopt.targets.relax.lower",
    "register_lowering": "mcopt.targets.relax.lower",
    "LOWERINGS": "mcopt.targets.relax.lower",
    "build_tvm_baseline": "mcopt.targets.relax.baseline",
    "tune": "mcopt.targets.tune.tuner",
    "apply_database": "mcopt.targets.tune.tuner",
    "merge_databases": "mcopt.targets.tune.tuner",
    "check_database_dir": "mcopt.targets.tune.tuner",
    "run_remote": "mcopt.targets.tune.rpc",
}


def build(
    graph: Any,
    target: str | TargetSpec = "cpu",
    *,
    db: Any = None,
    repair_db: bool = False,
    **options: Any,
) -> Any:
    """Compile `graph` for `target`. Targets with their own builder (e.g. `fpga`, which emits C)
    dispatch to it; every other target goes through TVM (`mcopt.targets.relax.builder.build`). With `db`
    (a tuning database directory written by `mcopt.tune`), tuned schedules replace the defaults
    wherever they are faster; the report of what was applied is `compiled.tuning_report`.
    Every line of `db` is checked before TVM reads it: a bad one is a one-line
    `TuningDatabaseError`, or with `repair_db=True` dropped (the report's message says how many).
    A missing compiler (`spec.toolchain`) is a one-line TargetError before any work."""
    from mcopt.targets.toolchain import require_toolchain

    spec = get_target(target)
    require_toolchain(spec)
    custom = getattr(spec, "builder", None)
    if custom is not None:
        if db is not None and "db" in inspect.signature(custom).parameters:  # e.g. arm targets
            options = {**options, "db": db, "repair_db": repair_db}
        return custom(graph, **options)
    if db is not None:
        from mcopt.targets.tune.tuner import build_with_database

        compiled, report = build_with_database(graph, db, spec, repair=repair_db)
        compiled.tuning_report = report
        return compiled
    from mcopt.targets.relax.builder import build as tvm_build

    return tvm_build(graph, target=spec, **options)


def __getattr__(name: str) -> Any:
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'mcopt.targets' has no attribute {name!r}")
    return getattr(importlib.import_module(mod), name)


__all__ = [
    "LOWERINGS",
    "CompiledModel",
    "TargetSpec",
    "build",
    "build_tvm_baseline",
    "compile_module",
    "get_target",
    "load_library",
    "lower",
    "register_lowering",
    "register_target",
    "target_names",
]
