"""Autotuning with MetaSchedule: tasks from the compiled graph, a persistent JSON database per
device, reuse at build time, merging, local or RPC (device farm) measurement.

Method: the graph is lowered and run through mcopt's fusion pipeline with the default schedule
passes disabled (:func:`tuning_module`); each distinct unscheduled fused PrimFunc is one task
(MetaSchedule's ``relax_integration.extract_tasks``, weight = its number of calls). Tasks are
tuned by MetaSchedule's evolutionary search (Shao et al., "Tensor Program Optimization with
Probabilistic Programs", NeurIPS 2022) guided by its XGBoost cost model (``random`` when
``xgboost`` is absent), measured by ``LocalRunner`` or, with ``rpc="host:port"`` and ``key``,
by ``RPCRunner`` through a TVM RPC tracker. mcopt's kernel templates (functions marked
``mcopt.template``) are tuned in the template's own design space, seeded with the template's
analytic choice (:mod:`mcopt.targets.tune.space`). Tuning never changes numerics (lossless).

Database directory ``db`` (one per device):

- ``database_workload.json``, ``database_tuning_record.json``: MetaSchedule's ``JSONDatabase``
  (one JSON document per line; each record is appended as it is measured, so an interrupted run
  keeps what it measured and a truncated last line is dropped on the next open). Every line is
  checked before TVM reads it (:mod:`mcopt.targets.tune.db`: a bad line is a one-line
  :class:`~mcopt.errors.TuningDatabaseError` naming file and line; ``repair=True`` drops it);
- ``mcopt_tuning.json``: the target (TVM target JSON) and device the records were measured on
  (opening the directory for another target is a one-line :class:`TargetError`) and
  ``baseline_ms``: the measured latency of mcopt's default schedule of every task — a record is
  installed only when it beats it, so a short tune never makes a kernel slower;
- ``logs/``: MetaSchedule's per-task logs.

:class:`CommittingScheduler` joins every measured batch before searching the next (MetaSchedule's
own schedulers commit a task's results only when they revisit it). A rerun with the same ``db`` counts the measured records of each task and runs only the trials
still missing from the budget; MetaSchedule starts its search from the measured records.
:func:`apply_database` (``MetaScheduleApplyDatabase``) installs the best record of every task
into a module at build time and reports the tasks without records.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tvm
import tvm_ffi
from tvm import relax, tirx
from tvm.ir.utils import derived_object
from tvm.s_tir import meta_schedule as ms

from mcopt.errors import OptionError, TargetError, TuningDatabaseError
from mcopt.ir.core import Graph
from mcopt.targets.registry import TargetSpec, get_target
from mcopt.targets.relax.lower import _first_line
from mcopt.targets.toolchain import require_toolchain
from mcopt.targets.tune.db import REPAIR_HINT, CheckReport, check_database, verified_info
from mcopt.targets.tune.space import (
    install_tensor_intrin,
    pooled_builder,
    schedule_templates,
    space_for,
    template_of,
    template_seed_trace,
)

log = logging.getLogger(__name__)

META_FILE = "mcopt_tuning.json"
WORKLOAD_FILE = "database_workload.json"
RECORD_FILE = "database_tuning_record.json"
#: schedule passes of the build pipeline that tuning must not run (tasks are unscheduled)
SCHEDULE_PASSES = ("McoptCPUSchedule", "McoptTemplateSchedule")


# --- reports -------------------------------------------------------------------------------
@dataclass
class TaskResult:
    """One tuning task: its name, calls per inference, records before/after, best latency."""

    name: str
    weight: int
    template: str | None
    records_before: int
    records_after: int
    best_ms: float | None


@dataclass
class TuneReport:
    """What :func:`tune` did. ``trials`` counts the measurements of this run."""

    target: str
    device: str
    db: Path
    tasks: list[TaskResult]
    trials: int
    budget: int
    seconds: float
    cost_model: str
    repaired: str = ""

    @property
    def skipped(self) -> bool:
        """True when the database already held the whole budget (nothing was measured)."""
        return self.trials == 0

    def to_markdown(self) -> str:
        lines = [
            f"tuning for {self.target} on {self.device}: {self.trials} trials in "
            f"{self.seconds:.1f} s (budget {self.budget}, cost model {self.cost_model}), "
            f"database {self.db}",
            *([self.repaired] if self.repaired else []),
            "",
            "| task | calls | template | records | best ms |",
            "|---|---:|---|---:|---:|",
        ]
        for t in self.tasks:
            best = "-" if t.best_ms is None else f"{t.best_ms:.4f}"
            lines.append(
                f"| {t.name} | {t.weight} | {t.template or ''} | {t.records_after} | {best} |"
            )
        return "\n".join(lines)


@dataclass
class ApplyReport:
    """What :func:`apply_database` installed: tuned functions and those without records."""

    applied: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    default_faster: list[str] = field(default_factory=list)
    repaired: str = ""

    def message(self) -> str:
        msg = f"tuning database: {len(self.applied)} kernel(s) tuned"
        if self.default_faster:
            msg += f", {len(self.default_faster)} kept the faster default schedule"
        if self.missing:
            msg += (
                f", no records for {len(self.missing)} (default schedules): "
                f"{', '.join(self.missing)}"
            )
        return f"{msg}; {self.repaired}" if self.repaired else msg


@dataclass
class ProgressEvent:
    """Sent to the ``progress`` callback after every measured batch."""

    task: str
    task_index: int
    num_tasks: int
    trials_done: int
    trials_total: int
    best_ms: dict[str, float]


# --- database directory --------------------------------------------------------------------
def _target_key(target: tvm.target.Target) -> str:
    return json.dumps(json.loads(str(target)), sort_keys=True)


def host_device() -> str:
    """A short description of this machine (CPU model, core count)."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model} x{os.cpu_count() or 1}"


def _read_meta(db: Path, *, repair: bool = False) -> dict[str, Any] | None:
    """The metadata file, or None where there is none. A corrupt one is a one-line
    TuningDatabaseError (with ``repair``: None, so that the caller writes it again)."""
    path = db / META_FILE
    if not path.exists():
        return None
    try:
        meta = json.loads(path.read_text())
        if not isinstance(meta, dict) or "target" not in meta:
            raise ValueError("no 'target' entry")
        if not isinstance(meta["target"], dict):
            raise ValueError("its 'target' is not a target object")
    except (ValueError, OSError) as e:
        if repair:
            log.warning("%s: corrupt (%s); written again", path, _first_line(e))
            return None
        raise TuningDatabaseError(
            f"corrupt tuning database file {str(path)!r}: {_first_line(e)}; run with repair to "
            "write it again (mcopt tune --repair / mcopt optimize --repair-db; repair=True / "
            "repair_db=True in Python)"
        ) from None
    return meta


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


def _remember_verified(db: Path, verified: dict[str, Any]) -> None:
    """Keep the digests of the lines known good (the next check decodes only new lines)."""
    meta = _read_meta(db)
    if meta is not None and verified and meta.get("verified") != verified:
        try:
            _write_json(db / META_FILE, {**meta, "verified": verified})
        except OSError as e:  # a read-only database: it is checked again next time
            log.debug("cannot record the verified lines of %s: %s", db, e)


def _trust_database_files(db: Path) -> None:
    """After TVM itself appended to the files (tuning, merging): every line is known good."""
    _remember_verified(db, verified_info(db))


def check_database_dir(
    db: str | os.PathLike[str],
    target: str | TargetSpec = "cpu",
    *,
    create: bool = False,
    device: str | None = None,
    repair: bool = False,
) -> CheckReport:
    """Check (with ``repair``: repair) the database directory ``db`` for ``target`` before TVM
    reads it: the metadata file, the target, and every line of both JSON files
    (:func:`mcopt.targets.tune.db.check_database`). One-line errors: a missing directory (without
    ``create``) or one for another target is a TargetError, a bad line a TuningDatabaseError."""
    spec = get_target(target)
    key = _target_key(spec.tvm_target())
    path = Path(db)
    if path.exists() and not path.is_dir():
        raise TargetError(f"tuning database {str(path)!r} is a file, not a directory")
    meta = _read_meta(path, repair=repair) if path.is_dir() else None
    if meta is None and not create:
        if not (path / RECORD_FILE).exists():
            raise TargetError(f"no tuning database in {str(path)!r} (run `mcopt tune` first)")
    if meta is not None and json.dumps(meta["target"], sort_keys=True) != key:
        raise TargetError(
            f"tuning database {str(path)!r} holds records for target "
            f"{json.dumps(meta['target'], sort_keys=True)} ({meta.get('device', '?')}), "
            f"not {key}; use a database directory per device"
        )
    try:
        path.mkdir(parents=True, exist_ok=True)
        if meta is None:
            meta = {
                "format": 1,
                "target_name": spec.name,
                "target": json.loads(key),
                "device": device or host_device(),
                "tvm": tvm.__version__,
            }
            _write_json(path / META_FILE, meta)
    except OSError as e:
        raise TargetError(
            f"cannot write the tuning database {str(path)!r}: {e.strerror or e}"
        ) from None
    report = check_database(path, json.loads(key), repair=repair, verified=meta.get("verified"))
    _remember_verified(path, report.verified)
    return report


def _open(
    db: str | os.PathLike[str],
    target: str | TargetSpec,
    *,
    create: bool = False,
    device: str | None = None,
    repair: bool = False,
) -> tuple[ms.database.JSONDatabase, CheckReport]:
    report = check_database_dir(db, target, create=create, device=device, repair=repair)
    try:
        database = ms.database.JSONDatabase(work_dir=str(db), module_equality="structural")
    except Exception as e:  # checked line by line above: not expected
        raise TuningDatabaseError(
            f"corrupt tuning database in {str(db)!r}: {_first_line(e)}; {REPAIR_HINT}"
        ) from None
    return database, report


def open_database(
    db: str | os.PathLike[str],
    target: str | TargetSpec = "cpu",
    *,
    create: bool = False,
    device: str | None = None,
    repair: bool = False,
) -> ms.database.JSONDatabase:
    """Open (or with ``create`` make) the tuning database directory ``db`` for ``target``.

    Every line is checked before TVM reads it (:func:`check_database_dir`); ``repair`` drops the
    bad ones (logged with how many). Raises a one-line :class:`TargetError` when the directory is
    missing (without ``create``) or belongs to another target, a :class:`TuningDatabaseError`
    (file, line, what is wrong, the repair hint) for a bad line.
    """
    return _open(db, target, create=create, device=device, repair=repair)[0]


def merge_databases(
    dirs: Sequence[str | os.PathLike[str]], out: str | os.PathLike[str], *, repair: bool = False
) -> Path:
    """Merge the records of several database directories (same target) into ``out``.

    Records already in ``out`` are not duplicated; different targets are a TargetError; every
    database is checked first (``repair``: bad lines of the inputs and of ``out`` are dropped).
    """
    if not dirs:
        raise OptionError("merge_databases needs at least one database directory")
    metas = []
    for d in dirs:
        meta = _read_meta(Path(d))
        if meta is None:
            raise TargetError(f"{str(d)!r} is not an mcopt tuning database (no {META_FILE})")
        metas.append(meta)
    key = json.dumps(metas[0]["target"], sort_keys=True)
    for d, meta in zip(dirs, metas, strict=True):
        if json.dumps(meta["target"], sort_keys=True) != key:
            raise TargetError(
                f"cannot merge {str(d)!r}: its records are for target "
                f"{json.dumps(meta['target'], sort_keys=True)}, not {key}"
            )
    outp = Path(out)
    out_meta = _read_meta(outp) if outp.is_dir() else None
    if out_meta is not None and json.dumps(out_meta["target"], sort_keys=True) != key:
        raise TargetError(f"cannot merge into {str(outp)!r}: it holds another target's records")
    outp.mkdir(parents=True, exist_ok=True)
    if out_meta is None:
        devices = sorted({m.get("device", "?") for m in metas})
        _write_json(outp / META_FILE, {**metas[0], "device": " + ".join(devices)})
    sources = []
    for d, meta in zip(dirs, metas, strict=True):
        report = check_database(
            Path(d), meta["target"], repair=repair, verified=meta.get("verified")
        )
        _remember_verified(Path(d), report.verified)
        sources.append(ms.database.JSONDatabase(work_dir=str(d), module_equality="structural"))
    out_check = check_database(
        outp, json.loads(key), repair=repair, verified=(_read_meta(outp) or {}).get("verified")
    )
    _remember_verified(outp, out_check.verified)
    dst = ms.database.JSONDatabase(work_dir=str(outp), module_equality="structural")
    seen = {_record_key(r) for r in dst.get_all_tuning_records()}
    for src in sources:
        for rec in src.get_all_tuning_records():
            k = _record_key(rec)
            if k in seen:
                continue
            seen.add(k)
            wl = dst.commit_workload(rec.workload.mod)
            dst.commit_tuning_record(
                ms.database.TuningRecord(rec.trace, wl, rec.run_secs, rec.target, rec.args_info)
            )
    _trust_database_files(outp)
    return outp


def _record_key(rec: Any) -> str:
    return f"{rec.workload.as_json()[0]}|{tvm.ir.save_json(rec.as_json())}"


# --- tasks ---------------------------------------------------------------------------------
def tuning_module(graph: Graph | tvm.IRModule, target: str | TargetSpec = "cpu") -> tvm.IRModule:
    """The module whose unscheduled PrimFuncs are the tasks: ``graph`` lowered and fused by
    :func:`mcopt.targets.relax.builder.mcopt_pipeline` with its schedule passes disabled."""
    from mcopt.targets.relax import builder

    spec = get_target(target)
    if isinstance(graph, tvm.IRModule):
        mod = graph
    elif hasattr(builder, "lower_for"):  # the same lowering as builder.build (kernel templates)
        mod = builder.lower_for(graph, spec)
    else:
        from mcopt.targets.relax.lower import lower

        mod = lower(graph)
    mcopt_pipeline = builder.mcopt_pipeline
    with spec.tvm_target(), tvm.transform.PassContext(disabled_pass=list(SCHEDULE_PASSES)):
        return mcopt_pipeline(spec)(mod)


def _is_scheduled(func: Any) -> bool:
    return func.attrs is not None and "tirx.is_scheduled" in func.attrs


def extract_tasks(mod: tvm.IRModule, target: str | TargetSpec = "cpu") -> list[ms.ExtractedTask]:
    """The distinct unscheduled PrimFuncs of a fused module (weights = call counts)."""
    spec = get_target(target)
    tasks = ms.relax_integration.extract_tasks(mod, spec.tvm_target())
    return [t for t in tasks if not _is_scheduled(t.dispatched[0]["main"])]


def _task_records(db: ms.database.Database, wl_mod: tvm.IRModule) -> tuple[int, float | None]:
    if not db.has_workload(wl_mod):
        return 0, None
    recs = db.get_top_k(db.commit_workload(wl_mod), 1 << 20)
    best = None
    if recs:
        best = min(float(sum(float(s) for s in r.run_secs) / len(r.run_secs)) for r in recs)
    return len(recs), None if best is None else best * 1e3


# --- measurement plumbing ------------------------------------------------------------------
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


@derived_object
class _ProgressCallback(ms.measure_callback.PyMeasureCallback):
    """Counts measured trials and the best latency per task; forwards a ProgressEvent."""

    def __init__(self, names: list[str], total: int, fn: Callable[[ProgressEvent], None]):
        self.names = names
        self.total = total
        self.fn = fn
        self.done = 0
        self.ok = 0
        self.first_error: str | None = None
        self.best: dict[str, float] = {}

    def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results):
        name = self.names[task_id]
        for br, rr in zip(builder_results, runner_results, strict=False):
            self.done += 1
            err = br.error_msg or rr.error_msg
            if err and self.first_error is None:
                lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
                self.first_error = lines[-1] if lines else str(err)
            if err is None and rr.run_secs:
                self.ok += 1
                ms_ = 1e3 * sum(float(s) for s in rr.run_secs) / len(rr.run_secs)
                self.best[name] = min(self.best.get(name, math.inf), ms_)
        self.fn(
            ProgressEvent(name, task_id, len(self.names), self.done, self.total, dict(self.best))
        )


@derived_object
class CommittingScheduler(ms.task_scheduler.PyTaskScheduler):
    """Round-robin over the unfinished tasks that first joins every batch still being measured,
    so each measured record is in the database (appended to its JSON file) before the next
    batch is searched.

    MetaSchedule's own schedulers join a task's results only when they pick that task again
    (the gradient scheduler not before its whole warm-up round): an interrupted run would lose
    up to a whole round of measurements. Joining first also keeps the search from competing
    for the cores with the timing runs. Budgets are spread evenly (``trials_per_iter`` per
    turn); MetaSchedule's gradient scheduler is used with ``scheduler="gradient"``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.cursor = -1

    def next_task_id(self) -> int:
        tasks = self._outer().tasks_  # type: ignore[attr-defined]
        for i, rec in enumerate(tasks):
            if rec.runner_futures is not None:
                self.join_running_task(i)
        for _ in range(len(tasks)):
            self.cursor = (self.cursor + 1) % len(tasks)
            if not tasks[self.cursor].is_terminated:
                return self.cursor
        return -1


class RichProgress:
    """A rich progress bar: trials done / budget and the best latency of the last task."""

    def __init__(self) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self._p = Progress(
            TextColumn("tuning"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TextColumn("{task.description}"), transient=False,
        )  # fmt: skip
        self._id: Any = None

    def __call__(self, ev: ProgressEvent) -> None:
        if self._id is None:
            self._p.start()
            self._id = self._p.add_task("", total=ev.trials_total)
        best = ev.best_ms.get(ev.task)
        desc = f"{ev.task} ({ev.task_index + 1}/{ev.num_tasks}) best " + (
            f"{best:.4f} ms" if best is not None else "-"
        )
        self._p.update(self._id, completed=min(ev.trials_done, ev.trials_total), description=desc)

    def close(self) -> None:
        if self._id is not None:
            self._p.stop()


def _log_progress(ev: ProgressEvent) -> None:
    best = ev.best_ms.get(ev.task)
    log.info(
        "tuning %d/%d trials; %s best %s ms",
        ev.trials_done, ev.trials_total, ev.task, "-" if best is None else f"{best:.4f}",
    )  # fmt: skip


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


def _workload_key(db: ms.database.Database, wl_mod: tvm.IRModule) -> str:
    return str(db.commit_workload(wl_mod).as_json()[0])


def _measure_baselines(
    db: ms.database.Database,
    db_dir: Path,
    wls: list[tvm.IRModule],
    spec: TargetSpec,
    builder: ms.builder.Builder,
    runner: ms.runner.Runner,
) -> None:
    """Measure mcopt's default schedule of every (non-template) task once and keep it in the
    metadata file (``baseline_ms`` by workload hash): :func:`apply_database` installs a record
    only when it beats this, so a short tune never makes a kernel slower than untuned."""
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


# --- public API ----------------------------------------------------------------------------
def tune(
    graph: Graph | tvm.IRModule,
    target: str | TargetSpec = "cpu",
    trials: int = 64,
    db: str | os.PathLike[str] = "tuning",
    *,
    rpc: str | None = None,
    key: str | None = None,
    progress: Callable[[ProgressEvent], None] | bool | None = None,
    seed: int = 0,
    cost_model: str = "auto",
    strategy: Any = "evolutionary",
    trials_per_iter: int = 64,
    scheduler: str = "committing",
    repair: bool = False,
) -> TuneReport:
    """Tune the kernels of ``graph`` for ``target`` with ``trials`` measurements in total.

    ``db``: the database directory of this device (created; reused and extended by a rerun).
    ``rpc``/``key``: measure on remote devices registered under ``key`` at the tracker
    ``rpc = "host:port"``. ``progress``: a callback taking :class:`ProgressEvent`, True for a
    rich progress bar, False for none; None = a bar on a terminal, log lines otherwise.
    ``cost_model``: ``"xgb"``, ``"random"`` or ``"auto"`` (xgb when xgboost is installed).
    ``strategy``: ``"evolutionary"``, ``"replay-trace"`` or a MetaSchedule SearchStrategy.
    ``scheduler``: ``"committing"`` (:class:`CommittingScheduler`: every record is saved
    before the next batch) or MetaSchedule's ``"gradient"`` / ``"round-robin"``.
    ``repair``: drop the bad lines of an existing ``db`` (else they are a one-line
    :class:`TuningDatabaseError`); the report's ``repaired`` says how many were dropped.
    """
    if scheduler not in ("committing", "gradient", "round-robin"):
        raise OptionError(f"scheduler must be committing, gradient or round-robin: {scheduler!r}")
    if trials < 0:
        raise OptionError(f"trials must be >= 0, got {trials}")
    spec = get_target(target)
    require_toolchain(spec)  # the builders link every candidate kernel
    tgt = spec.tvm_target()
    install_tensor_intrin(str(tgt.kind.name), _mtriple(tgt))
    if cost_model == "auto":
        cost_model = "xgb" if importlib.util.find_spec("xgboost") else "random"
    if cost_model not in ("xgb", "random"):
        raise OptionError(f"cost_model must be 'xgb', 'random' or 'auto', got {cost_model!r}")
    device = f"rpc {key}@{rpc}" if rpc else host_device()
    if rpc is not None:  # validate before any work
        _parse_rpc(rpc)
        if not key:
            raise OptionError("remote tuning (--rpc) needs the device key (--key)")
        check_tracker(rpc, key)
    t0 = time.perf_counter()
    tasks = extract_tasks(tuning_module(graph, spec), spec)
    database, checked = _open(db, spec, create=True, device=device, repair=repair)
    names = [t.task_name for t in tasks]
    wls = [t.dispatched[0] for t in tasks]
    before = [_task_records(database, wl)[0] for wl in wls]
    remaining = max(0, trials - sum(before))
    done = 0
    base = (_read_meta(Path(db)) or {}).get("baseline_ms", {})
    no_base = any(
        template_of(wl["main"]) is None and _workload_key(database, wl) not in base for wl in wls
    )
    if tasks and remaining == 0 and no_base:  # e.g. a database made before baselines existed
        builder = make_builder(tgt, remote=rpc is not None)
        try:
            _measure_baselines(database, Path(db), wls, spec, builder, make_runner(rpc, key))
        finally:
            builder.shutdown()
    if tasks and remaining > 0:
        builder = make_builder(tgt, remote=rpc is not None)
        runner = make_runner(rpc, key)
        for wl, n in zip(wls, before, strict=True):
            if n == 0 and template_of(wl["main"]) is not None:
                _seed_template(database, Path(db), wl, tgt, builder, runner)
        _measure_baselines(database, Path(db), wls, spec, builder, runner)
        if progress is None:
            progress = True if sys.stderr.isatty() else _log_progress
        bar = RichProgress() if progress is True else None
        fn = bar if bar is not None else (progress or (lambda ev: None))
        cb = _ProgressCallback(names, remaining, fn)  # type: ignore[arg-type]
        ms_log = logging.getLogger("tvm.s_tir.meta_schedule")
        if ms_log.level == logging.NOTSET:  # its console handler copies this level
            ms_log.setLevel(logging.WARNING)
        # every task gets a batch in the first round: small budgets are spread over all tasks
        per_iter = max(1, min(trials_per_iter, -(-remaining // len(tasks))))
        contexts = [
            ms.TuneContext(
                mod=wl,
                target=tgt,
                space_generator=space_for(wl["main"]),
                search_strategy=strategy,
                task_name=name,
                rand_state=s,
                num_threads="physical",
                logger=lg,
            ).clone()
            for wl, name, s, lg in zip(
                wls,
                names,
                ms.utils.fork_seed(seed, n=len(tasks)),
                ms.logging.get_loggers_from_work_dir(str(Path(db)), names),
                strict=True,
            )
        ]
        try:
            ms.tune_tasks(
                tasks=contexts,
                task_weights=[float(t.weight) for t in tasks],
                work_dir=str(db),
                max_trials_global=remaining,
                num_trials_per_iter=per_iter,
                builder=builder,
                runner=runner,
                database=database,
                cost_model=cost_model,
                measure_callbacks=[*ms.measure_callback.MeasureCallback.create("default"), cb],
                task_scheduler=CommittingScheduler() if scheduler == "committing" else scheduler,
            )
        except Exception as e:
            raise TargetError(f"tuning for {spec.name!r} failed: {_first_line(e)}") from None
        finally:
            if bar is not None:
                bar.close()
            builder.shutdown()
        done = cb.done
        if done and not cb.ok:
            raise TargetError(
                f"tuning for {spec.name!r} on {device}: all {done} measurements failed: "
                f"{cb.first_error}"
            )
    results = []
    for t, wl, n in zip(tasks, wls, before, strict=True):
        after, best = _task_records(database, wl)
        results.append(
            TaskResult(t.task_name, int(t.weight), template_of(wl["main"]), n, after, best)
        )
    _trust_database_files(Path(db))  # what TVM appended in this run is known good
    return TuneReport(
        spec.name, device, Path(db), results, done, trials, time.perf_counter() - t0, cost_model,
        checked.message(),
    )  # fmt: skip


def apply_database(
    mod: tvm.IRModule,
    db: str | os.PathLike[str],
    target: str | TargetSpec = "cpu",
    *,
    repair: bool = False,
) -> tuple[tvm.IRModule, ApplyReport]:
    """Install the best record of every task of a fused, unscheduled module (the build
    pipeline after fusion, before its default schedules) and report the tasks without records.

    Template functions without records get the untuned template schedule; other unscheduled
    functions are left for the default schedule pass. A database for another target is a
    one-line TargetError, a bad line a TuningDatabaseError (``repair``: dropped, said in the
    report's message).
    """
    spec = get_target(target)
    tgt = spec.tvm_target()
    database, checked = _open(db, spec, repair=repair)
    funcs = {
        gv.name_hint: f
        for gv, f in mod.functions_items()
        if isinstance(f, tirx.PrimFunc) and not _is_scheduled(f)
    }
    with tgt, database:
        out = relax.transform.MetaScheduleApplyDatabase(enable_warning=False)(mod)
    # a record slower than the default schedule measured while tuning is not used
    base = (_read_meta(Path(db)) or {}).get("baseline_ms", {})
    slower = []
    if base:
        for task in extract_tasks(mod, spec):
            wl = task.dispatched[0]
            key = _workload_key(database, wl)
            best = _task_records(database, wl)[1]
            if key in base and best is not None and best >= base[key]:
                slower.append(wl["main"].without_attr("global_symbol"))
    report = ApplyReport(repaired=checked.message())
    for name, f in funcs.items():
        plain = f.without_attr("global_symbol")
        if _is_scheduled(out[name]) and any(tvm_ffi.structural_equal(plain, w) for w in slower):
            out[name] = f  # back to the default schedule
            report.default_faster.append(name)
        elif _is_scheduled(out[name]):
            report.applied.append(name)
        else:
            report.missing.append(name)
    return schedule_templates(out), report


def task_summary(
    graph: Graph, db: str | os.PathLike[str], target: str | TargetSpec = "cpu"
) -> list[dict[str, Any]]:
    """Per tuning task of ``graph``: name, template, calls, FLOPs (``estimate_tir_flops``), the
    untuned kernel's time (the template's analytic schedule or mcopt's default schedule, as
    measured while tuning), the database's best time and the GFLOP/s of both."""
    from tvm.s_tir.analysis import estimate_tir_flops

    spec = get_target(target)
    database = open_database(db, spec)
    meta = _read_meta(Path(db)) or {}
    untuned_ms = {**meta.get("baseline_ms", {}), **meta.get("template_ms", {})}
    rows = []
    for t in extract_tasks(tuning_module(graph, spec), spec):
        wl = t.dispatched[0]
        flops = float(estimate_tir_flops(wl))
        n, best = _task_records(database, wl)
        has = database.has_workload(wl)  # (never add a workload to the database here)
        base = untuned_ms.get(_workload_key(database, wl)) if has else None
        rows.append(
            {
                "task": t.task_name,
                "template": template_of(wl["main"]) or "",
                "calls": int(t.weight),
                "mflop": flops / 1e6,
                "records": n,
                "untuned_ms": base,
                "best_ms": best,
                "untuned_gflops": flops / base / 1e6 if base else None,
                "best_gflops": flops / best / 1e6 if best else None,
            }
        )
    return rows


def build_with_database(
    graph: Graph,
    db: str | os.PathLike[str],
    target: str | TargetSpec = "cpu",
    *,
    repair: bool = False,
) -> tuple[Any, ApplyReport]:
    """Compile ``graph`` with the records of ``db``: fuse, :func:`apply_database`, the default
    schedule for the rest, ``tvm.compile``. Returns ``(CompiledModel, ApplyReport)``.

    (What ``builder.build(graph, target, db=DIR)`` does once wired; kept here for benchmarks.)
    ``repair``: drop the database's bad lines first (else they are a TuningDatabaseError).
    """
    from mcopt.targets.cpu.schedule import cpu_schedule_pass
    from mcopt.targets.relax.builder import CompiledModel, lowering_choices

    spec = get_target(target)
    fused = tuning_module(graph, spec)
    choices = lowering_choices(fused)
    mod, report = apply_database(fused, db, spec, repair=repair)
    try:
        with spec.tvm_target():
            mod = cpu_schedule_pass(spec.vector_lanes(32), spec.num_cores)(mod)
        ex = tvm.compile(mod, target=spec.tvm_target())
    except Exception as e:
        raise TargetError(f"TVM build for target {spec.name!r} failed: {_first_line(e)}") from None
    specs = [(v.name, tuple(v.shape), v.dtype) for v in graph.inputs]
    model = CompiledModel(ex, spec.name, specs, [v.name for v in graph.outputs], "mcopt+db")
    model.choices = choices
    return model, report


def database_pass(db: str | os.PathLike[str], target: str | TargetSpec = "cpu") -> Any:
    """:func:`apply_database` as a module pass for the build pipeline (logs missing tasks)."""

    @tvm.transform.module_pass(opt_level=0, name="McoptApplyTuningDatabase")
    def _pass(mod: tvm.IRModule, _ctx: Any) -> tvm.IRModule:
        out, report = apply_database(mod, db, target)
        (log.warning if report.missing else log.info)("%s", report.message())
        return out

    return _pass


__all__ = [
    "ApplyReport",
    "CommittingScheduler",
    "ProgressEvent",
    "RichProgress",
    "TaskResult",
    "TuneReport",
    "apply_database",
    "build_with_database",
    "check_database_dir",
    "database_pass",
    "extract_tasks",
    "host_device",
    "make_builder",
    "make_runner",
    "merge_databases",
    "open_database",
    "task_summary",
    "tune",
    "tuning_module",
]
