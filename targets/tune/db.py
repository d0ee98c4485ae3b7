"""Validation and repair of MetaSchedule JSON tuning databases before TVM reads them.

TVM 0.27's ``JSONDatabase`` trusts its two files: a line that is JSON but not a record
dereferences a null pointer (``{"not": "a record"}`` in the record file, or a blank line there,
segfaults the process), a null decision in a trace crashes the trace replay, an index past the
workload table or a malformed line is a ``Check failed`` deep in C++, and a negative run time is
taken as the fastest kernel. Every line is therefore checked here, against the layout TVM's C++
code (``json_database.cc``, ``database.cc``, ``arg_info.cc``, ``trace.cc``) reads and writes:

``database_workload.json``, one line per workload; the line number (from 0) is its index::

    ["<structural hash, decimal>", "<base64 of: uint64 little-endian length + JSON graph>"]

``database_tuning_record.json``, one line per measurement::

    [<workload index>, [<trace>, <run_secs>, <target>, <args_info>]]
    trace     = [[[kind, inputs, attrs, outputs], ...], [[instruction index, decision], ...]]
    run_secs  = [seconds, ...]            (1e10 marks a failed measurement)
    target    = {"kind": "llvm", ...}     (tvm.target.Target config)
    args_info = [["TENSOR", dtype, [dims...]], ...]

Two levels:

- **structure** (this process, pure Python, every line): UTF-8 JSON that TVM's own reader parses
  the same way (no ``NaN``/``Infinity``, no ``\\u`` escapes, no blank lines), the shapes above,
  run times positive and finite, workload indices in range and pointing at good workloads,
  decision indices in range and non-null, exact duplicate workloads (TVM numbers new workloads by
  the size of its table, so a duplicate line makes every later append point at the wrong line),
  targets that ``tvm.target.Target`` parses and that are this database's target;
- **decoding** (a child process, only for lines not verified before): each workload module loads,
  no two are structurally equal, each trace replays on its workload, each record's argument
  shapes are its workload's. The child runs in its own interpreter, so a line that still crashes
  TVM only costs that child (the line is reported as one that crashes TVM).

Lines verified once are remembered by their digests (``verified`` in the database's
``mcopt_tuning.json``: one per workload line, one per record line together with its workload
line's, and one per file), so a database is decoded again only where it changed; what TVM
appended itself during ``mcopt tune`` is trusted.

A bad line is a one-line :class:`~mcopt.errors.TuningDatabaseError` naming the file, the line and
what is wrong; ``repair=True`` rewrites both files (temp file + rename each; originals kept as
``*.bak``) without the bad lines, without the records of dropped workloads, with the remaining
records renumbered, and reports how many lines it dropped. A truncated last line (a write cut by
an interrupted run) is dropped without ``repair``; so is nothing else.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import math
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mcopt.errors import TuningDatabaseError

log = logging.getLogger(__name__)

WORKLOAD_FILE = "database_workload.json"
RECORD_FILE = "database_tuning_record.json"
#: what the one-line errors tell the user to run
REPAIR_HINT = (
    "run with repair to drop the bad lines (mcopt tune --repair / mcopt optimize --repair-db; "
    "repair=True / repair_db=True in Python)"
)
#: restarts of the decoding child after TVM crashed on a line, before the rest is given up
MAX_CHILD_CRASHES = 8
_INDEX_RE = re.compile(rb"^\s*\[\s*(\d+)\s*,")
_BAD_ESCAPE_RE = re.compile(rb"(?<!\\)(?:\\\\)*\\u")
_DTYPE_RE = re.compile(r"^(bool|u?int(8|16|32|64)|float(8_e4m3fn|8_e5m2|16|32|64)|bfloat16)$")


# --- report ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Problem:
    """One bad line: ``file`` (name inside the database), ``line`` (1-based) and what is wrong."""

    file: str
    line: int
    what: str


@dataclass
class CheckReport:
    """What :func:`check_database` found (and with ``repair`` did) in a database directory."""

    db: Path
    workloads: int = 0
    records: int = 0
    problems: list[Problem] = field(default_factory=list)
    dropped_workloads: int = 0
    dropped_records: int = 0
    truncated: list[str] = field(default_factory=list)
    repaired: bool = False
    decoded: int = 0
    verified: dict[str, Any] = field(default_factory=dict)

    @property
    def dropped(self) -> int:
        """Lines dropped by the repair (workloads + records)."""
        return self.dropped_workloads + self.dropped_records

    def message(self) -> str:
        """One line: what the repair dropped (empty when nothing was repaired)."""
        if not self.repaired or not self.problems:
            return ""
        first = self.problems[0]
        return (
            f"repaired tuning database {str(self.db)!r}: dropped {self.dropped_workloads} "
            f"workload line(s) and {self.dropped_records} record line(s) (first: {first.file} "
            f"line {first.line}: {first.what}); kept {self.workloads} workload(s) and "
            f"{self.records} record(s); the original files are in *.bak"
        )


# --- file access -----------------------------------------------------------------------------
@dataclass
class _Lines:
    """A database file split as TVM's ``std::getline`` does."""

    name: str
    data: bytes
    lines: list[bytes]
    newline_at_end: bool


def _read_lines(path: Path) -> _Lines:
    data = path.read_bytes() if path.exists() else b""
    parts = data.split(b"\n")
    newline_at_end = data.endswith(b"\n") or not data
    if newline_at_end:
        parts = parts[:-1]
    return _Lines(path.name, data, parts, newline_at_end)


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _line_digest(raw: bytes) -> str:
    return hashlib.sha256(raw.strip()).hexdigest()[:16]


def _record_digest(raw: bytes, workload_digest: str) -> str:
    """A record line without its index (renumbering keeps it), with its workload line."""
    m = _INDEX_RE.match(raw)
    body = raw[m.end() :] if m else raw
    return hashlib.sha256(workload_digest.encode() + b"|" + body.strip()).hexdigest()[:16]


def _verified_info(wf: _Lines, rf: _Lines) -> dict[str, Any]:
    """The ``verified`` metadata of two files whose every line is known good."""
    wd = [_line_digest(raw) for raw in wf.lines]
    rd = []
    for raw in rf.lines:
        m = _INDEX_RE.match(raw)
        if m is not None and int(m.group(1)) < len(wd):
            rd.append(_record_digest(raw, wd[int(m.group(1))]))
    return {
        "files": {wf.name: _digest(wf.data), rf.name: _digest(rf.data)},
        "workloads": sorted(set(wd)),
        "records": sorted(set(rd)),
    }


def verified_info(db: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``verified`` metadata of a database whose every line is known good (what TVM itself
    just wrote)."""
    path = Path(db)
    return _verified_info(_read_lines(path / WORKLOAD_FILE), _read_lines(path / RECORD_FILE))


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise TuningDatabaseError(
            f"cannot rewrite tuning database file {str(path)!r}: {e.strerror or e}"
        ) from None


# --- structure (pure Python) -----------------------------------------------------------------
class _LineError(ValueError):
    pass


def _no_constant(name: str) -> Any:
    raise _LineError(f"{name} is not a number TVM's JSON reader accepts")


def _finite_float(text: str) -> float:
    v = float(text)
    if not math.isfinite(v):
        raise _LineError(f"number {text} is out of range")
    return v


def _parse_line(raw: bytes) -> Any:
    """The JSON value of one line, parsed as TVM's reader would (or _LineError)."""
    if not raw.strip():
        raise _LineError("blank line (TVM cannot read it)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _LineError("not UTF-8 text (binary data)") from None
    if _BAD_ESCAPE_RE.search(raw):
        raise _LineError("a \\u escape, which TVM's JSON reader cannot read")
    try:
        return json.loads(text, parse_constant=_no_constant, parse_float=_finite_float)
    except _LineError:
        raise
    except json.JSONDecodeError as e:
        raise _LineError(f"not JSON ({e.msg} at column {e.colno})") from None
    except (ValueError, RecursionError) as e:
        raise _LineError(f"not JSON ({e})") from None


def _describe(v: Any) -> str:
    text = json.dumps(v, allow_nan=True)
    return text if len(text) <= 40 else text[:37] + "..."


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def check_workload_line(raw: bytes) -> str:
    """Structure of one workload line; returns the dedupe key (shash + module text)."""
    v = _parse_line(raw)
    if not (isinstance(v, list) and len(v) == 2):
        raise _LineError(
            f"not a workload (expected [structural hash, base64 module]): {_describe(v)}"
        )
    shash, b64 = v
    if not (isinstance(shash, str) and shash.isdigit() and len(shash) <= 20):
        raise _LineError(f"structural hash {_describe(shash)} is not a decimal string")
    if not isinstance(b64, str):
        raise _LineError(f"module {_describe(b64)} is not a base64 string")
    try:
        blob = base64.b64decode(b64, validate=True)
    except ValueError:
        raise _LineError("module is not valid base64") from None
    if len(blob) < 8 or int.from_bytes(blob[:8], "little") != len(blob) - 8:
        raise _LineError("module payload is damaged (its length prefix does not match)")
    try:
        graph = json.loads(blob[8:].decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise _LineError("module payload is not a JSON graph") from None
    if not (
        isinstance(graph, dict)
        and _is_int(graph.get("root_index"))
        and isinstance(graph.get("nodes"), list)
        and 0 <= graph["root_index"] < len(graph["nodes"])
    ):
        raise _LineError("module payload is not a TVM JSON graph (root_index / nodes)")
    return f"{shash}|{b64}"


def _check_trace(trace: Any) -> None:
    if not (isinstance(trace, list) and len(trace) == 2):
        raise _LineError("trace is not [instructions, decisions]")
    insts, decisions = trace
    if not (isinstance(insts, list) and isinstance(decisions, list)):
        raise _LineError("trace is not [instructions, decisions]")
    for i, inst in enumerate(insts):
        if not (
            isinstance(inst, list)
            and len(inst) == 4
            and isinstance(inst[0], str)
            and inst[0]
            and all(isinstance(part, list) for part in inst[1:])
            and all(isinstance(o, str) and o for o in inst[3])
        ):
            raise _LineError(
                f"trace instruction {i} is not [name, inputs, attributes, outputs]: "
                f"{_describe(inst)}"
            )
        for x in inst[1]:
            if isinstance(x, str) and not x:
                raise _LineError(f"trace instruction {i} has an empty input name")
    seen = set()
    for d in decisions:
        if not (isinstance(d, list) and len(d) == 2 and _is_int(d[0])):
            raise _LineError(f"trace decision is not [instruction index, value]: {_describe(d)}")
        if not 0 <= d[0] < len(insts):
            raise _LineError(
                f"trace decision for instruction {d[0]} is out of range ({len(insts)} instructions)"
            )
        if d[1] is None:
            raise _LineError(f"trace decision for instruction {d[0]} is null")
        if d[0] in seen:
            raise _LineError(f"two trace decisions for instruction {d[0]}")
        seen.add(d[0])


def _check_run_secs(run_secs: Any) -> None:
    if not (isinstance(run_secs, list) and run_secs):
        raise _LineError(f"run times {_describe(run_secs)} are not a non-empty list")
    for s in run_secs:
        if not _is_num(s):
            raise _LineError(f"run time {_describe(s)} is not a number")
        if not math.isfinite(s):
            raise _LineError(f"run time {s} is not finite")
        if s <= 0:
            raise _LineError(f"run time {s} is not positive")


def _check_args_info(args: Any) -> None:
    if not isinstance(args, list):
        raise _LineError(f"argument info {_describe(args)} is not a list")
    for a in args:
        if not (
            isinstance(a, list)
            and len(a) == 3
            and a[0] == "TENSOR"
            and isinstance(a[1], str)
            and _DTYPE_RE.match(a[1])
            and isinstance(a[2], list)
            and all(_is_int(d) and 0 <= d < 2**62 for d in a[2])
        ):
            raise _LineError(f"argument info {_describe(a)} is not ['TENSOR', dtype, [dims]]")


def _check_target_shape(target: Any) -> None:
    if not (isinstance(target, dict) and isinstance(target.get("kind"), str)):
        raise _LineError(f"target {_describe(target)} is not a target object with a 'kind'")


def check_record_line(raw: bytes, num_workloads: int) -> int:
    """Structure of one record line; returns its workload index."""
    v = _parse_line(raw)
    if not (isinstance(v, list) and len(v) == 2 and isinstance(v[1], list) and len(v[1]) == 4):
        raise _LineError(
            "not a tuning record (expected [workload index, [trace, run times, target, "
            f"argument info]]): {_describe(v)}"
        )
    index, (trace, run_secs, target, args) = v
    if not _is_int(index):
        raise _LineError(f"workload index {_describe(index)} is not an integer")
    if not 0 <= index < num_workloads:
        raise _LineError(
            f"workload index {index} is out of range (the workload file has {num_workloads} "
            "line(s))"
        )
    if _INDEX_RE.match(raw) is None:
        raise _LineError("workload index is not a plain integer")
    _check_run_secs(run_secs)
    _check_target_shape(target)
    _check_args_info(args)
    _check_trace(trace)
    return index


# --- targets -----------------------------------------------------------------------------------
def canonical_target(config: Any) -> str:
    """``config`` parsed by ``tvm.target.Target`` and dumped again (sorted keys); raises
    _LineError with TVM's message where it does not parse."""
    import tvm

    try:
        return json.dumps(json.loads(str(tvm.target.Target(config))), sort_keys=True)
    except Exception as e:  # TVM's own errors for an unknown kind / attribute
        msg = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        raise _LineError(
            f"target {_describe(config)} does not parse ({msg[-1] if msg else type(e).__name__})"
        ) from None


class _TargetChecker:
    """Caches canonical forms: records repeat the same target dict."""

    def __init__(self, expected: Any) -> None:
        self.expected = None if expected is None else canonical_target(expected)
        self._seen: dict[str, str] = {}

    def __call__(self, config: Any) -> None:
        key = json.dumps(config, sort_keys=True)
        if key not in self._seen:
            self._seen[key] = canonical_target(config)
        got = self._seen[key]
        if self.expected is not None and got != self.expected:
            raise _LineError(f"measured for target {got}, not this database's {self.expected}")


# --- the check ---------------------------------------------------------------------------------
def _is_truncated_write(raw: bytes) -> bool:
    """A cut-off JSON line as an interrupted append leaves it (ASCII, starts a record / workload,
    the JSON error is at its very end) — not binary garbage or an edited line."""
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        return False
    if not text.lstrip().startswith("["):
        return False
    try:
        json.loads(text)
    except json.JSONDecodeError as e:
        return e.pos >= len(text.rstrip()) - 1 or e.msg.startswith("Unterminated string")
    return False


def _drop_truncated_last_line(path: Path, f: _Lines) -> bool:
    """An unterminated last line: dropped when it is a cut-off write, given its newline when it
    is a complete line (else TVM's next append would run into it)."""
    if f.newline_at_end or not f.lines:
        return False
    last = f.lines[-1]
    try:
        _parse_line(last)
        complete = True
    except _LineError:
        complete = False
    if complete:
        f.data += b"\n"
        f.newline_at_end = True
        _atomic_write(path, f.data)
        return False
    if not _is_truncated_write(last):
        return False  # reported as a bad line
    log.warning("%s: dropping a truncated last line (interrupted run)", path)
    f.lines.pop()
    f.data = f.data[: len(f.data) - len(last)]
    f.newline_at_end = True
    _atomic_write(path, f.data)
    return True


def check_database(
    db: str | os.PathLike[str],
    target: Any = None,
    *,
    repair: bool = False,
    decode: bool = True,
    verified: dict[str, Any] | None = None,
) -> CheckReport:
    """Check every line of the JSON database in directory ``db`` (see the module docstring).

    ``target``: the database's target (a ``tvm.target.Target`` or its config dict); records
    measured for another target are bad. ``verified``: the ``verified`` metadata of an earlier
    check (lines it covers are not decoded again). ``decode``: also decode the unverified lines
    in a child process. Raises a one-line :class:`TuningDatabaseError` for the first bad line
    (how many more there are, and the repair hint, in the message) unless ``repair``; then the
    files are rewritten without the bad lines. The returned report's ``verified`` is the
    metadata to keep for the next check.
    """
    path = Path(db)
    report = CheckReport(path)
    wpath, rpath = path / WORKLOAD_FILE, path / RECORD_FILE
    wf, rf = _read_lines(wpath), _read_lines(rpath)
    for p, f in ((wpath, wf), (rpath, rf)):
        if _drop_truncated_last_line(p, f):
            report.truncated.append(f.name)
    ver = verified if isinstance(verified, dict) else {}
    if ver.get("files") == {wf.name: _digest(wf.data), rf.name: _digest(rf.data)}:
        report.workloads, report.records = len(wf.lines), len(rf.lines)
        report.verified = ver  # nothing changed since the last check
        return report
    ver_w = set(ver.get("workloads") or [])
    ver_r = set(ver.get("records") or [])

    bad_w: dict[int, str] = {}
    bad_r: dict[int, str] = {}
    keys: dict[str, int] = {}
    for i, raw in enumerate(wf.lines):
        try:
            key = check_workload_line(raw)
        except _LineError as e:
            bad_w[i] = str(e)
            continue
        if key in keys:
            bad_w[i] = (
                f"duplicate of workload line {keys[key] + 1} (TVM would number the workloads "
                "it appends wrongly)"
            )
        else:
            keys[key] = i
    targets = _TargetChecker(target)
    index_of: dict[int, int] = {}
    for j, raw in enumerate(rf.lines):
        try:
            idx = check_record_line(raw, len(wf.lines))
            if idx in bad_w:
                raise _LineError(f"its workload (line {idx + 1}) is bad: {bad_w[idx]}")
            targets(json.loads(raw)[1][2])
        except _LineError as e:
            bad_r[j] = str(e)
            continue
        index_of[j] = idx

    if decode:
        wd = {i: _line_digest(raw) for i, raw in enumerate(wf.lines) if i not in bad_w}
        todo_w = [i for i, d in wd.items() if d not in ver_w]
        todo_r = [
            j for j, idx in index_of.items() if _record_digest(rf.lines[j], wd[idx]) not in ver_r
        ]
        if bad_w or bad_r:  # the first problem is already known; decode only what a repair keeps
            todo_w = todo_w if repair else []
            todo_r = todo_r if repair else []
        if todo_w or todo_r:
            good_w = [i for i in range(len(wf.lines)) if i not in bad_w]
            dw, dr = decode_lines(wpath, rpath, good_w, todo_w, todo_r)
            report.decoded = len(todo_w) + len(todo_r)
            bad_w.update(dw)
            bad_r.update(dr)
            for j, idx in index_of.items():
                if j not in bad_r and idx in bad_w:
                    bad_r[j] = f"its workload (line {idx + 1}) is bad: {bad_w[idx]}"

    report.problems = sorted(
        [Problem(wf.name, i + 1, w) for i, w in bad_w.items()]
        + [Problem(rf.name, j + 1, w) for j, w in bad_r.items()],
        key=lambda p: (p.file != wf.name, p.line),
    )
    if report.problems and not repair:
        first = report.problems[0]
        more = len(report.problems) - 1
        raise TuningDatabaseError(
            f"corrupt tuning database file {str(path / first.file)!r} line {first.line}: "
            f"{first.what}" + (f" ({more} more bad line(s))" if more else "") + f"; {REPAIR_HINT}"
        )
    if report.problems:
        _rewrite(wpath, rpath, wf, rf, set(bad_w), set(bad_r), index_of, report)
        report.repaired = True
    report.workloads = len(wf.lines) - len(bad_w)
    report.records = len(rf.lines) - report.dropped_records
    if report.repaired:
        log.warning("%s", report.message())
    if decode:  # every line left is now known good
        report.verified = verified_info(path)
    return report


def _rewrite(
    wpath: Path,
    rpath: Path,
    wf: _Lines,
    rf: _Lines,
    bad_w: set[int],
    bad_r: set[int],
    index_of: dict[int, int],
    report: CheckReport,
) -> None:
    """Both files without the bad lines (records of dropped workloads dropped too, the rest
    renumbered); originals kept as ``*.bak``; each file replaced atomically, workloads first."""
    new_index: dict[int, int] = {}
    kept_w: list[bytes] = []
    for i, raw in enumerate(wf.lines):
        if i not in bad_w:
            new_index[i] = len(kept_w)
            kept_w.append(raw)
    kept_r: list[bytes] = []
    for j, raw in enumerate(rf.lines):
        idx = index_of.get(j)
        if j in bad_r or idx is None or idx not in new_index:
            continue
        m = _INDEX_RE.match(raw)
        assert m is not None  # checked by check_record_line
        kept_r.append(b"[%d," % new_index[idx] + raw[m.end() :])
    report.dropped_workloads = len(wf.lines) - len(kept_w)
    report.dropped_records = len(rf.lines) - len(kept_r)
    for p, f in ((wpath, wf), (rpath, rf)):
        if p.exists():
            _atomic_write(p.with_name(p.name + ".bak"), f.data)
    _atomic_write(wpath, b"".join(line + b"\n" for line in kept_w))
    _atomic_write(rpath, b"".join(line + b"\n" for line in kept_r))


# --- decoding in a child process ---------------------------------------------------------------
def decode_lines(
    wpath: Path,
    rpath: Path,
    good_w: list[int],
    todo_w: list[int],
    todo_r: list[int],
    *,
    timeout: float | None = None,
    run: Callable[..., Any] = subprocess.run,
) -> tuple[dict[int, str], dict[int, str]]:
    """Decode lines with TVM in a child interpreter (:func:`_decode_main`); a line on which TVM
    crashes (or hangs) the child is reported as such and the child restarted after it. Returns
    the bad workload and record lines (0-based) with what is wrong."""
    bad_w: dict[int, str] = {}
    bad_r: dict[int, str] = {}
    skip_w: list[int] = []
    crashes = 0
    todo = [("w", i) for i in todo_w] + [("r", j) for j in todo_r]
    while todo:
        job = {
            "workloads": str(wpath),
            "records": str(rpath),
            "good_w": [i for i in good_w if i not in skip_w],
            "todo": todo,
        }
        limit = timeout if timeout is not None else 120.0 + 0.2 * len(todo)
        try:
            proc = run(
                [
                    sys.executable,
                    "-c",
                    "from mcopt.targets.tune.db import _decode_main; _decode_main()",
                ],
                input=json.dumps(job),
                capture_output=True,
                text=True,
                timeout=limit,
            )
            out, rc = proc.stdout, proc.returncode
        except subprocess.TimeoutExpired as e:
            out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
            rc = None
        done: set[tuple[str, int]] = set()
        current: tuple[str, int] | None = None
        finished = False
        for ln in out.splitlines():
            parts = ln.split(" ", 3)
            if parts[0] == "AT" and len(parts) >= 3:
                current = (parts[1], int(parts[2]))
            elif parts[0] == "OK" and len(parts) >= 3:
                done.add((parts[1], int(parts[2])))
            elif parts[0] == "BAD" and len(parts) == 4:
                kind, n, what = parts[1], int(parts[2]), parts[3]
                (bad_w if kind == "w" else bad_r)[n] = what
                done.add((kind, n))
            elif parts[0] == "DONE":
                finished = True
        if finished:
            break
        if current is None or current in done:  # died before or between lines: give up
            why = "the decoding child failed" + (f" (exit {rc})" if rc is not None else "")
            for kind, n in todo:
                if (kind, n) not in done:
                    (bad_w if kind == "w" else bad_r)[n] = f"not verified: {why}"
            break
        kind, n = current
        what = "TVM hangs reading it" if rc is None else f"TVM crashes reading it (exit {rc})"
        (bad_w if kind == "w" else bad_r)[n] = what
        done.add(current)
        if kind == "w":
            skip_w.append(n)
        crashes += 1
        todo = [t for t in todo if t not in done]
        if crashes >= MAX_CHILD_CRASHES:
            for k, m in todo:
                (bad_w if k == "w" else bad_r)[m] = "not verified (TVM crashed on earlier lines)"
            break
    return bad_w, bad_r


def _read_all(path: str) -> list[bytes]:
    with open(path, "rb") as f:
        data = f.read()
    parts = data.split(b"\n")
    return parts[:-1] if data.endswith(b"\n") else parts


def _first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    line = next((ln for ln in lines if "rror" in ln), lines[0] if lines else "")
    return f"{type(e).__name__}: {line}"[:200] if line else type(e).__name__


def _decode_main() -> None:  # pragma: no cover - runs in the child process
    """The child of :func:`decode_lines`: reads the job from stdin, prints ``AT``/``OK``/``BAD``
    lines as it goes and ``DONE`` at the end."""
    job = json.loads(sys.stdin.read())
    import tvm  # noqa: F401
    import tvm_ffi
    from tvm.s_tir import meta_schedule as ms

    wl_lines = _read_all(job["workloads"])
    rec_lines = _read_all(job["records"])
    todo = [tuple(t) for t in job["todo"]]
    todo_w = {n for k, n in todo if k == "w"}
    good = set(job["good_w"])
    workloads: dict[int, Any] = {}
    bad: dict[int, str] = {}
    by_hash: dict[int, list[int]] = {}

    def say(*parts: Any) -> None:
        print(*parts, flush=True)

    for i in sorted(good):
        say("AT", "w", i)
        try:
            wl = ms.database.Workload.from_json(json.loads(wl_lines[i]))
            mod = wl.mod
            if not isinstance(mod, tvm.IRModule):
                raise ValueError("the module is not an IRModule")
            h = int(tvm_ffi.structural_hash(mod))
            dup = next(
                (k for k in by_hash.get(h, []) if tvm_ffi.structural_equal(workloads[k].mod, mod)),
                None,
            )
            if dup is not None:
                raise ValueError(
                    f"duplicate of workload line {dup + 1} (TVM would number the workloads it "
                    "appends wrongly)"
                )
            by_hash.setdefault(h, []).append(i)
            workloads[i] = wl
            if i in todo_w:
                say("OK", "w", i)
        except Exception as e:
            bad[i] = (
                str(e)
                if str(e).startswith("duplicate")
                else f"module does not load ({_first_line(e)})"
            )
            if i in todo_w:
                say("BAD", "w", i, bad[i])
    args_of: dict[int, Any] = {}
    for kind, j in todo:
        if kind != "r":
            continue
        say("AT", "r", j)
        try:
            rec = json.loads(rec_lines[j])
            idx = rec[0]
            if idx not in workloads:
                raise ValueError(f"its workload (line {idx + 1}) is bad: {bad.get(idx, 'unknown')}")
            wl = workloads[idx]
            if idx not in args_of:
                args_of[idx] = [
                    json.loads(json.dumps(a.as_json()))
                    for a in ms.arg_info.ArgInfo.from_entry_func(wl.mod, True)
                ]
            if rec[1][3] != args_of[idx]:
                raise ValueError(
                    f"its argument shapes {json.dumps(rec[1][3])[:80]} are not those of its "
                    f"workload (line {idx + 1}): {json.dumps(args_of[idx])[:80]}"
                )
            try:
                ms.database.TuningRecord.from_json(rec[1], wl)
            except Exception as e:
                raise ValueError(
                    f"its trace does not replay on its workload (line {idx + 1}): {_first_line(e)}"
                ) from None
            say("OK", "r", j)
        except Exception as e:
            say("BAD", "r", j, " ".join(str(e).split()))
    say("DONE")


def format_problems(problems: Iterable[Problem]) -> str:
    """``file line N: what`` per problem, one per line (for logs)."""
    return "\n".join(f"{p.file} line {p.line}: {p.what}" for p in problems)


__all__ = [
    "REPAIR_HINT",
    "CheckReport",
    "Problem",
    "canonical_target",
    "check_database",
    "check_record_line",
    "check_workload_line",
    "decode_lines",
    "format_problems",
    "verified_info",
]
