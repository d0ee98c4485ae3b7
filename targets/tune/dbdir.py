"""The tuning database directory (one per device): the metadata file, opening and checking a
directory before TVM reads it, merging directories.

Directory ``db``:

- ``database_workload.json``, ``database_tuning_record.json``: MetaSchedule's ``JSONDatabase``
  (one JSON document per line; each record is appended as it is measured, so an interrupted run
  keeps what it measured and a truncated last line is dropped on the next open). Every line is
  checked before TVM reads it (:mod:`mcopt.targets.tune.db`: a bad line is a one-line
  :class:`~mcopt.errors.TuningDatabaseError` naming file and line; ``repair=True`` drops it);
- ``mcopt_tuning.json``: the target (TVM target JSON) and device the records were measured on
  (opening the directory for another target is a one-line :class:`TargetError`), ``cost``: what
  a record's ``run_secs`` hold (``{"measurer": "time", "unit": "seconds"}``: run times on this
  host or an RPC device; ``{"measurer": "icount", "unit": "instructions", "qemu_cpu": ...}``:
  executed aarch64 instructions per call counted under qemu, :class:`~.measure.IcountRunner`;
  a database without it holds run times; tuning into a database of the other measurer is a
  one-line :class:`TargetError`, a malformed entry a :class:`TuningDatabaseError`) and
  ``baseline_ms`` (``baseline_instructions``): the measured cost of mcopt's default schedule of
  every task — a record is installed only when it beats it, so a short tune never makes a kernel
  slower;
- ``logs/``: MetaSchedule's per-task logs.
"""

from __future__ import annotations

import json
import logging
import os
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import tvm
from tvm.s_tir import meta_schedule as ms

from mcopt.errors import OptionError, TargetError, TuningDatabaseError
from mcopt.targets.registry import TargetSpec, get_target
from mcopt.targets.relax.lower import _first_line
from mcopt.targets.tune.db import REPAIR_HINT, CheckReport, check_database, verified_info

log = logging.getLogger(__name__)

META_FILE = "mcopt_tuning.json"
WORKLOAD_FILE = "database_workload.json"
RECORD_FILE = "database_tuning_record.json"


#: ``cost["measurer"]`` -> (unit of ``run_secs``, unit shown, factor from ``run_secs`` to it)
MEASURERS = {"time": ("seconds", "ms", 1e3), "icount": ("instructions", "instructions", 1.0)}


def cost_info(measurer: str = "time", **extra: Any) -> dict[str, Any]:
    """The ``cost`` entry of the metadata file for records measured by ``measurer``."""
    return {"measurer": measurer, "unit": MEASURERS[measurer][0], **extra}


def db_measurer(meta: dict[str, Any] | None) -> str:
    """What measured the records of a database: "time" (also a database without ``cost``) or
    "icount"."""
    return str(((meta or {}).get("cost") or {}).get("measurer", "time"))


def cost_unit(measurer: str) -> str:
    """The unit costs are shown and kept in (``baseline_<unit>``): "ms" or "instructions"."""
    return MEASURERS[measurer][1]


def cost_scale(measurer: str) -> float:
    """Factor from a record's ``run_secs`` to :func:`cost_unit`."""
    return MEASURERS[measurer][2]


def cost_key(meta: dict[str, Any] | None, what: str) -> str:
    """The metadata entry of the untuned costs ``what`` ("baseline", "template") in the unit of
    the database's measurer: ``baseline_ms`` / ``baseline_instructions``."""
    return f"{what}_{cost_unit(db_measurer(meta))}"


def _describe_cost(cost: dict[str, Any] | None) -> str:
    cost = cost or cost_info("time")
    if cost.get("measurer") == "icount":
        return f"executed-instruction counts (qemu -cpu {cost.get('qemu_cpu', '?')})"
    return "run times"


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
        cost = meta.get("cost", {})
        if not isinstance(cost, dict) or cost.get("measurer", "time") not in MEASURERS:
            raise ValueError(f"its 'cost' is not one of the measurers {', '.join(MEASURERS)}")
        if cost and cost.get("unit") != MEASURERS[cost.get("measurer", "time")][0]:
            raise ValueError(f"its 'cost' unit {cost.get('unit')!r} is not its measurer's")
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
    cost: dict[str, Any] | None = None,
) -> CheckReport:
    """Check (with ``repair``: repair) the database directory ``db`` for ``target`` before TVM
    reads it: the metadata file, the target, and every line of both JSON files
    (:func:`mcopt.targets.tune.db.check_database`). One-line errors: a missing directory (without
    ``create``) or one for another target is a TargetError, a bad line a TuningDatabaseError.
    ``cost`` (:func:`cost_info`; when tuning into ``db``): the measurer of the new records,
    written into a new database; one whose records another measurer made is a TargetError."""
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
    if meta is not None and cost is not None and db_measurer(meta) != cost["measurer"]:
        raise TargetError(
            f"tuning database {str(path / META_FILE)!r} holds {_describe_cost(meta.get('cost'))}, "
            f"not {_describe_cost(cost)}; use a database directory per device and measurer"
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
                "cost": cost or cost_info("time"),
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
    cost: dict[str, Any] | None = None,
) -> tuple[ms.database.JSONDatabase, CheckReport]:
    report = check_database_dir(db, target, create=create, device=device, repair=repair, cost=cost)
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
        if db_measurer(meta) != db_measurer(metas[0]):
            raise TargetError(
                f"cannot merge {str(d)!r}: its records are {_describe_cost(meta.get('cost'))}, "
                f"not {_describe_cost(metas[0].get('cost'))}"
            )
    outp = Path(out)
    out_meta = _read_meta(outp) if outp.is_dir() else None
    if out_meta is not None and json.dumps(out_meta["target"], sort_keys=True) != key:
        raise TargetError(f"cannot merge into {str(outp)!r}: it holds another target's records")
    if out_meta is not None and db_measurer(out_meta) != db_measurer(metas[0]):
        raise TargetError(
            f"cannot merge into {str(outp)!r}: it holds "
            f"{_describe_cost(out_meta.get('cost'))}, not {_describe_cost(metas[0].get('cost'))}"
        )
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


__all__ = [
    "MEASURERS",
    "META_FILE",
    "RECORD_FILE",
    "WORKLOAD_FILE",
    "check_database_dir",
    "cost_info",
    "cost_key",
    "cost_scale",
    "cost_unit",
    "db_measurer",
    "host_device",
    "merge_databases",
    "open_database",
]
