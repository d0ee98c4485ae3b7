"""Measuring candidates while tuning: the build-worker pool and the runner (``LocalRunner``,
``RPCRunner`` through a TVM RPC tracker, or :class:`IcountRunner`: executed aarch64 instructions
under qemu for an ARM target without a device), the tracker check, and the first measurements of
a task: the untuned kernel template (its seed record) and mcopt's default schedule (the baseline
a record must beat to be installed).

Costs are what the runner returns in ``run_secs``: seconds for the timing runners, instructions
for :class:`IcountRunner`; the database says which (``cost`` in its metadata file,
:mod:`mcopt.targets.tune.dbdir`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import tvm
from tvm.ir.utils import derived_object
from tvm.s_tir import meta_schedule as ms

from mcopt.errors import OptionError, TargetError
from mcopt.targets.registry import TargetSpec
from mcopt.targets.relax.lower import _first_line
from mcopt.targets.tune.dbdir import (
    META_FILE,
    _read_meta,
    _write_json,
    cost_info,
    cost_key,
    cost_scale,
    db_measurer,
)
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
    rpc: str | None,
    key: str | None,
    *,
    number: int = 3,
    min_repeat_ms: int = 50,
    cost: dict[str, Any] | None = None,
) -> ms.runner.Runner:
    """``LocalRunner``, ``RPCRunner`` through the tracker ``rpc`` for devices named ``key``, or
    with ``cost`` of the icount measurer (:func:`icount_cost`) an :class:`IcountRunner`."""
    if cost is not None and cost.get("measurer") == "icount":
        return IcountRunner(cost["qemu_cpu"])
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


def icount_cost(target: TargetSpec) -> dict[str, Any]:
    """The ``cost`` entry (:func:`~.dbdir.cost_info`) of instruction counts for an aarch64
    target: the qemu CPU model that counts them (the target's core, else the least-featured model
    with all its features). A one-line TargetError saying how to set up the counter (or to attach
    a device) where qemu-user or the counting plugin is missing."""
    from mcopt.targets.arm import icount
    from mcopt.targets.arm.emulate import qemu_cpu_for_target, qemu_cpus

    reason = icount.unavailable_reason()
    if reason is not None:
        raise TargetError(
            f"tuning {target.name!r} without a device measures executed instructions under qemu, "
            f"but {reason}; or attach a device with --rpc HOST:PORT --key KEY"
        )
    cpu = qemu_cpu_for_target(target.tvm_target(), available=qemu_cpus(icount.QEMU))
    return cost_info("icount", qemu_cpu=cpu)


def _random_arg(info: Any, rng: np.random.Generator) -> np.ndarray:
    """A buffer for one argument of a candidate (``ArgInfo``): normal floats, any int8/uint8,
    0/1 for wider integers (safe as indices) and booleans."""
    _, dtype, shape = info.as_json()
    shape = [int(d) for d in shape]
    dt = np.dtype(str(dtype))
    if dt.kind == "f":
        return rng.standard_normal(shape).astype(dt)
    if dt.kind in "iu" and dt.itemsize == 1:
        return rng.integers(np.iinfo(dt).min, np.iinfo(dt).max + 1, shape).astype(dt)
    return rng.integers(0, 2, shape).astype(dt)


@derived_object
class IcountRunner(ms.runner.PyRunner):
    """A MetaSchedule runner whose cost is the executed aarch64 instructions of one call of the
    candidate kernel, counted under ``qemu-aarch64 -cpu <cpu>`` with the counting plugin
    (:func:`mcopt.targets.arm.icount.count_instructions`, kind "kernel"); ``run_secs`` holds
    that count (lower is better; exact and repeatable, so one call after an uncounted warm-up).

    Per kernel, not per model: the tuner's tasks are kernels and MetaSchedule measures each
    candidate's library alone (built and cross-linked by the builder pool). A batch runs in one
    guest process (the emulated interpreter and TVM runtime start once, ~10 s); a candidate that
    crashes the guest is a failed measurement and the rest of the batch is counted again. The
    call from Python is counted too: the same few thousand instructions for every candidate of a
    task. A count is not a latency (no caches, stalls or per-instruction cost)."""

    def __init__(self, cpu: str, *, timeout_per_kernel: float = 60.0, seed: int = 0) -> None:
        super().__init__()
        self.cpu = cpu
        self.timeout_per_kernel = timeout_per_kernel
        self.rng = np.random.default_rng(seed)

    def run(self, runner_inputs: list[Any]) -> list[Any]:
        from mcopt.targets.arm.icount import IcountJob, count_instructions

        jobs = [
            IcountJob(
                f"candidate {k}",
                "kernel",
                str(ri.artifact_path),
                [_random_arg(a, self.rng) for a in ri.args_info],
                n=1,
            )
            for k, ri in enumerate(runner_inputs)
        ]
        rows: list[dict[str, Any]] = []
        while len(rows) < len(jobs):  # the jobs after a crashed one run again
            rest = jobs[len(rows) :]
            timeout = 120.0 + self.timeout_per_kernel * len(rest)
            try:
                rows += count_instructions(rest, cpu=self.cpu, timeout=timeout, partial=True)
            except TargetError as e:  # not set up / a missing artifact: every candidate failed
                rows += [{"error": str(e)}] * len(rest)
        futures = []
        for row in rows:
            n = row.get("per_inference")
            if "error" in row or n is None or n <= 0:
                res = ms.runner.RunnerResult(None, f"icount: {row.get('error', 'no count')}")
            else:
                res = ms.runner.RunnerResult([float(n)], None)
            futures.append(ms.runner.RunnerFuture(lambda: True, lambda res=res: res))
        return futures


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
    (its cost is also kept in the metadata file, ``template_ms`` / ``template_instructions`` by
    workload hash)."""
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
    field, scale = cost_key(meta, "template"), cost_scale(db_measurer(meta))
    seeds = {**meta.get(field, {}), str(wl.as_json()[0]): scale * sum(secs) / len(secs)}
    _write_json(db_dir / META_FILE, {**meta, field: seeds})


def _measure_baselines(
    db: ms.database.Database,
    db_dir: Path,
    wls: list[tvm.IRModule],
    spec: TargetSpec,
    builder: ms.builder.Builder,
    runner: ms.runner.Runner,
) -> None:
    """Measure mcopt's default schedule of every (non-template) task once and keep it in the
    metadata file (``baseline_ms`` / ``baseline_instructions`` by workload hash):
    :func:`~.apply.apply_database` installs a record only when it beats this, so a short tune
    never makes a kernel slower than untuned."""
    from mcopt.targets.cpu.schedule import schedule_primfunc

    meta = _read_meta(db_dir) or {}
    field, scale = cost_key(meta, "baseline"), cost_scale(db_measurer(meta))
    base = dict(meta.get(field, {}))
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
            base[key] = scale * sum(float(x) for x in rr.run_secs) / len(rr.run_secs)
    _write_json(db_dir / META_FILE, {**meta, field: base})


__all__ = [
    "IcountRunner",
    "check_tracker",
    "export_cross_aarch64",
    "icount_cost",
    "make_builder",
    "make_runner",
]
