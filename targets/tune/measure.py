"""Measuring candidates while tuning: the build-worker pool and the runner (``LocalRunner``, or
``RPCRunner`` through a TVM RPC tracker), the tracker check, and the first measurements of a
task: the untuned kernel template (its seed record) and mcopt's default schedule (the baseline a
record must beat to be installed).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import tvm
from tvm.s_tir import meta_schedule as ms

from mcopt.errors import OptionError, TargetError
from mcopt.targets.registry import TargetSpec
from mcopt.targets.relax.lower import _first_line
from mcopt.targets.tune.dbdir import META_FILE, _read_meta, _write_json
from mcopt.targets.tune.scheduler import _workload_key
from mcopt.targets.tune.space import pooled_builder, template_of, template_seed_trace

log = logging.getLogger(__name__)


def _mtriple(target: tvm.target.Target) -> str:
    attrs = target.attrs if target.attrs is not None else {}
    return str(attrs.get("mtriple", "")) if "mtriple" in attrs else ""


def export_cross_aarch64(rt_mod: Any) -> str:
    """``LocalBuilder`` export for AArch64 RPC devices: a shared library linked by Debian's
    ``aarch64-linux-gnu-g++`` (the remote needs no compiler)."""
    import tempfile

    from mcopt.targets.arm.builder import cross_compiler

    path = os.path.join(tempfile.mkdtemp(), "tvm_tmp_mod.so")
    rt_mod.export_library(path, fcompile=cross_compiler())
    return path


def _parse_rpc(rpc: str) -> tuple[str, int]:
    host, sep, port = rpc.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise OptionError(f"--rpc must be host:port (a TVM RPC tracker), got {rpc!r}")
    return host, int(port)


def check_tracker(rpc: str, key: str, timeout: float = 10.0) -> None:
    """One-line TargetError unless the tracker ``rpc`` answers and has a server for ``key``."""
    import socket

    from tvm import rpc as tvm_rpc

    host, port = _parse_rpc(rpc)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
        summary = tvm_rpc.connect_tracker(host, port).summary()
    except Exception as e:
        raise TargetError(f"cannot reach the RPC tracker at {rpc}: {_first_line(e)}") from None
    keys = sorted({str(s["key"]).split(":", 1)[-1] for s in summary.get("server_info", [])})
    if key not in keys:
        raise TargetError(
            f"no RPC server with key {key!r} at the tracker {rpc} (keys: {', '.join(keys) or 'none'})"
        )


def make_runner(
    rpc: str | None, key: str | None, *, number: int = 3, min_repeat_ms: int = 50
) -> ms.runner.Runner:
    """``LocalRunner``, or ``RPCRunner`` through the tracker ``rpc`` for devices named ``key``."""
    cfg = ms.runner.EvaluatorConfig(
        number=number, repeat=1, min_repeat_ms=min_repeat_ms, enable_cpu_cache_flush=False
    )
    if rpc is None:
        return ms.runner.LocalRunner(timeout_sec=60, evaluator_config=cfg)
    if not key:
        raise OptionError("remote tuning (--rpc) needs the device key (--key)")
    host, port = _parse_rpc(rpc)
    rpc_cfg = ms.runner.RPCConfig(
        tracker_host=host, tracker_port=port, tracker_key=key, session_timeout_sec=120
    )
    return ms.runner.RPCRunner(rpc_config=rpc_cfg, evaluator_config=cfg, max_workers=1)


def make_builder(target: tvm.target.Target, remote: bool) -> ms.builder.Builder:
    """A build-worker pool kept for the whole run whose workers register only this target's
    tensor intrinsics (~1 s instead of ~30-60 s per worker; :func:`pooled_builder`), exporting
    a cross-linked .so for AArch64 devices."""
    triple = _mtriple(target)
    f_export = export_cross_aarch64 if remote and triple.startswith("aarch64") else None
    return pooled_builder(str(target.kind.name), triple, f_export=f_export)


def _seed_template(
    db: ms.database.Database,
    db_dir: Path,
    wl_mod: tvm.IRModule,
    target: tvm.target.Target,
    builder: ms.builder.Builder,
    runner: ms.runner.Runner,
) -> None:
    """Measure the untuned template on the runner and commit it as the task's first record
    (its time is also kept in the metadata file, ``template_ms`` by workload hash)."""
    sch = template_seed_trace(wl_mod)
    (br,) = builder.build([ms.builder.BuilderInput(sch.mod, target)])
    if br.error_msg is not None:
        log.warning("template seed did not build: %s", _first_line(RuntimeError(br.error_msg)))
        return
    args = ms.arg_info.ArgInfo.from_prim_func(wl_mod["main"])
    kind = str(target.kind.name)
    dev = "cpu" if kind in ("llvm", "c") else kind
    (fut,) = runner.run([ms.runner.RunnerInput(br.artifact_path, dev, args)])
    rr = fut.result()
    if rr.error_msg is not None or not rr.run_secs:
        log.warning("template seed did not run: %s", _first_line(RuntimeError(rr.error_msg)))
        return
    wl = db.commit_workload(wl_mod)
    secs = [float(s) for s in rr.run_secs]
    db.commit_tuning_record(ms.database.TuningRecord(sch.trace, wl, secs, target, args))
    meta = _read_meta(db_dir) or {}
    seeds = {**meta.get("template_ms", {}), str(wl.as_json()[0]): 1e3 * sum(secs) / len(secs)}
    _write_json(db_dir / META_FILE, {**meta, "template_ms": seeds})


def _measure_baselines(
    db: ms.database.Database,
    db_dir: Path,
    wls: list[tvm.IRModule],
    spec: TargetSpec,
    builder: ms.builder.Builder,
    runner: ms.runner.Runner,
) -> None:
    """Measure mcopt's default schedule of every (non-template) task once and keep it in the
    metadata file (``baseline_ms`` by workload hash): :func:`~.apply.apply_database` installs a
    record only when it beats this, so a short tune never makes a kernel slower than untuned."""
    from mcopt.targets.cpu.schedule import schedule_primfunc

    meta = _read_meta(db_dir) or {}
    base = dict(meta.get("baseline_ms", {}))
    tgt = spec.tvm_target()
    todo = []
    for wl in wls:
        key = _workload_key(db, wl)
        if key in base or template_of(wl["main"]) is not None:
            continue
        try:
            func = schedule_primfunc(wl["main"], tgt, spec.vector_lanes(32), spec.num_cores)
        except Exception:  # the default pass keeps such functions naive too
            func = None
        todo.append((key, wl, tvm.IRModule({"main": func if func is not None else wl["main"]})))
    if not todo:
        return
    results = builder.build([ms.builder.BuilderInput(m, tgt) for _, _, m in todo])
    kind = str(tgt.kind.name)
    dev = "cpu" if kind in ("llvm", "c") else kind
    inputs, keys = [], []
    for (key, wl, _), br in zip(todo, results, strict=True):
        if br.error_msg is None:
            args = ms.arg_info.ArgInfo.from_prim_func(wl["main"])
            inputs.append(ms.runner.RunnerInput(br.artifact_path, dev, args))
            keys.append(key)
    for key, fut in zip(keys, runner.run(inputs), strict=True):
        rr = fut.result()
        if rr.error_msg is None and rr.run_secs:
            base[key] = 1e3 * sum(float(x) for x in rr.run_secs) / len(rr.run_secs)
    _write_json(db_dir / META_FILE, {**meta, "baseline_ms": base})


__all__ = ["check_tracker", "export_cross_aarch64", "make_builder", "make_runner"]
