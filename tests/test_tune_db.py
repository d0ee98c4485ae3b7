"""Damaged tuning databases (targets/tune/db.py): every corruption gives a one-line
TuningDatabaseError naming the file and the line (with the repair hint), or is repaired; none
crashes the process.

The valid database is built once by hand (two workloads, four records committed through TVM's own
JSONDatabase, no measuring). The corruptions run in one child process (this file run as a script)
so that a segfault inside TVM fails the tests instead of killing pytest; each test reads its case's
outcome from that run.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

tvm = pytest.importorskip("tvm")

from mcopt.errors import TargetError, TuningDatabaseError  # noqa: E402

pytestmark = pytest.mark.tvm

W, R, META = "database_workload.json", "database_tuning_record.json", "mcopt_tuning.json"


def make_valid_db(path: Path) -> Path:
    """Two workloads (mean, relu) and four records (w0, w1, w0, w1), written by TVM."""
    from tvm.s_tir import meta_schedule as ms

    from mcopt.ir import Graph, ttype
    from mcopt.targets.registry import get_target
    from mcopt.targets.tune.dbdir import _trust_database_files, open_database
    from mcopt.targets.tune.scheduler import extract_tasks, tuning_module

    g = Graph("tiny")
    x = g.add_input("x", ttype((1, 4, 6, 6)))
    r = g.add_node("relu", [x], {}).output
    g.outputs = [g.add_node("global_avg_pool", [r], {}).output]
    spec = get_target("cpu")
    tasks = extract_tasks(tuning_module(g, spec), spec)
    db = open_database(path, spec, create=True)
    for k in range(2):
        for t in tasks:
            mod = t.dispatched[0]
            sch = tvm.s_tir.Schedule(mod)
            loops = sch.get_loops(sch.get_child_blocks(sch.get_sblock("root"))[-1])
            sch.parallel(loops[0]) if k == 0 else sch.unroll(loops[-1])
            args = ms.arg_info.ArgInfo.from_entry_func(mod)
            wl = db.commit_workload(mod)
            rec = ms.database.TuningRecord(sch.trace, wl, [1e-5 * (k + 1)], spec.tvm_target(), args)
            db.commit_tuning_record(rec)
    _trust_database_files(path)
    return path


# --- the corruptions ------------------------------------------------------------------------------
def _lines(p: Path) -> list[bytes]:
    data = p.read_bytes()
    return data[:-1].split(b"\n") if data.endswith(b"\n") else data.split(b"\n")


def _write(p: Path, lines: list[bytes], end: bytes = b"\n") -> None:
    p.write_bytes(b"\n".join(lines) + (end if lines else b""))


def _edit_record(db: Path, i: int, fn: Callable[[Any], Any]) -> None:
    lines = _lines(db / R)
    lines[i] = json.dumps(fn(json.loads(lines[i])), allow_nan=True).encode()
    _write(db / R, lines)


def _set(path: tuple[int, ...], value: Any) -> Callable[[Any], Any]:
    def fn(rec: Any) -> Any:
        node = rec
        for p in path[:-1]:
            node = node[p]
        node[path[-1]] = value
        return rec

    return fn


def _raw_record(db: Path, i: int, old: bytes, new: bytes) -> None:
    lines = _lines(db / R)
    assert old in lines[i]
    lines[i] = lines[i].replace(old, new, 1)
    _write(db / R, lines)


def _insert(name: str, i: int, raw: bytes) -> Callable[[Path], None]:
    def fn(db: Path) -> None:
        lines = _lines(db / name)
        lines.insert(i, raw)
        _write(db / name, lines)

    return fn


def _delete(name: str, i: int) -> Callable[[Path], None]:
    def fn(db: Path) -> None:
        lines = _lines(db / name)
        del lines[i]
        _write(db / name, lines)

    return fn


def _truncate_last(name: str) -> Callable[[Path], None]:
    def fn(db: Path) -> None:
        data = (db / name).read_bytes()
        (db / name).write_bytes(data + data.splitlines()[0][:50])

    return fn


def _rename_block(db: Path) -> None:  # structurally fine; the trace no longer replays
    _raw_record(db, 1, b'["root","main"]', b'["nope","main"]')


def _damage_module(db: Path) -> None:
    lines = _lines(db / W)
    wl = json.loads(lines[1])
    wl[1] = wl[1][:-40] + "A" * 40
    lines[1] = json.dumps(wl).encode()
    _write(db / W, lines)


def _duplicate_workload(db: Path) -> None:
    lines = _lines(db / W)
    _write(db / W, [lines[0], lines[1], lines[0]])


def _forget_verified(db: Path) -> None:
    meta = json.loads((db / META).read_text())
    del meta["verified"]
    (db / META).write_text(json.dumps(meta))


def _empty(name: str) -> Callable[[Path], None]:
    return lambda db: (db / name).write_bytes(b"")


#: name -> (corruption, expected): ("error", file, line, what) — a one-line TuningDatabaseError,
#: then with repair the database keeps (workloads, records); ("ok", workloads, records) — opens
#: as is (nothing to repair).
CASES: dict[str, tuple[Callable[[Path], None], tuple[Any, ...]]] = {
    "not json": (_insert(R, 1, b"{not json"), ("error", R, 2, "not JSON", 2, 4)),
    "json non-record": (
        _insert(R, 4, b'{"not": "a record"}'),
        ("error", R, 5, "not a tuning record", 2, 4),
    ),
    "[1,2,3] record": (_insert(R, 0, b"[1,2,3]"), ("error", R, 1, "not a tuning record", 2, 4)),
    "record arity 3": (
        lambda db: _edit_record(db, 2, lambda r: [r[0], r[1][:3]]),
        ("error", R, 3, "not a tuning record", 2, 3),
    ),
    "workload line not a workload": (
        _insert(W, 2, b'{"a": 1}'),
        ("error", W, 3, "not a workload", 2, 4),
    ),
    "negative run time": (
        lambda db: _edit_record(db, 1, _set((1, 1), [-1e-5])),
        ("error", R, 2, "run time -1e-05 is not positive", 2, 3),
    ),
    "zero run time": (
        lambda db: _edit_record(db, 0, _set((1, 1), [0])),
        ("error", R, 1, "run time 0 is not positive", 2, 3),
    ),
    "NaN run time": (
        lambda db: _edit_record(db, 3, _set((1, 1), [math.nan])),
        ("error", R, 4, "NaN is not a number", 2, 3),
    ),
    "Infinity run time": (
        lambda db: _edit_record(db, 3, _set((1, 1), [math.inf])),
        ("error", R, 4, "Infinity is not a number", 2, 3),
    ),
    "1e999 run time": (
        lambda db: _raw_record(db, 0, b"[1.0000000000000000818e-05]", b"[1e999]"),
        ("error", R, 1, "out of range", 2, 3),
    ),
    "string run time": (
        lambda db: _edit_record(db, 0, _set((1, 1), ["fast"])),
        ("error", R, 1, "is not a number", 2, 3),
    ),
    "no run times": (
        lambda db: _edit_record(db, 0, _set((1, 1), None)),
        ("error", R, 1, "not a non-empty list", 2, 3),
    ),
    "workload index out of range": (
        lambda db: _edit_record(db, 1, _set((0,), 7)),
        ("error", R, 2, "index 7 is out of range", 2, 3),
    ),
    "negative workload index": (
        lambda db: _edit_record(db, 1, _set((0,), -1)),
        ("error", R, 2, "index -1 is out of range", 2, 3),
    ),
    # records 2 and 4 point past the table; 1 and 3 now point at the relu workload (decoded)
    "deleted workload line": (_delete(W, 0), ("error", R, 2, "out of range", 1, 0)),
    "deleted record line": (_delete(R, 0), ("ok", 2, 3)),
    "truncated last record line": (_truncate_last(R), ("ok", 2, 4)),
    "truncated last workload line": (_truncate_last(W), ("ok", 2, 4)),
    "empty record file": (_empty(R), ("ok", 2, 0)),
    "empty workload file": (_empty(W), ("error", R, 1, "out of range", 0, 0)),
    "binary garbage line": (
        _insert(R, 2, b"\x00\xff\xfe\x13garbage\x9c"),
        ("error", R, 3, "not UTF-8", 2, 4),
    ),
    "binary garbage tail": (
        lambda db: (db / R).write_bytes((db / R).read_bytes() + b"\x89PNG\r\x1a\x00"),
        ("error", R, 5, "not UTF-8", 2, 4),
    ),
    "blank line": (_insert(R, 1, b""), ("error", R, 2, "blank line", 2, 4)),
    "unknown target kind": (
        lambda db: _edit_record(db, 2, _set((1, 2), {"kind": "nonsense"})),
        ("error", R, 3, "does not parse", 2, 3),
    ),
    "another target": (
        lambda db: _edit_record(db, 2, _set((1, 2, "mcpu"), "haswell")),
        ("error", R, 3, "measured for target", 2, 3),
    ),
    "null trace decision": (
        lambda db: _edit_record(db, 0, _set((1, 0, 1), [[3, None]])),
        ("error", R, 1, "decision for instruction 3 is null", 2, 3),
    ),
    "decision index out of range": (
        lambda db: _edit_record(db, 0, _set((1, 0, 1), [[99, 1]])),
        ("error", R, 1, "out of range", 2, 3),
    ),
    "trace not replayable": (_rename_block, ("error", R, 2, "does not replay", 2, 3)),
    "argument shapes of another workload": (
        lambda db: _edit_record(db, 1, _set((1, 3, 0, 2), [1, 4, 6, 7])),
        ("error", R, 2, "argument shapes", 2, 3),
    ),
    "damaged workload module": (_damage_module, ("error", W, 2, "module payload", 1, 2)),
    "duplicate workload line": (
        _duplicate_workload,
        ("error", W, 3, "duplicate of workload line 1", 2, 4),
    ),
    "\\u escape": (
        lambda db: _raw_record(db, 0, b'"llvm"', b'"\\u006cl\\u0076m"'),
        ("error", R, 1, "\\u escape", 2, 3),
    ),
    "corrupt metadata": (
        lambda db: (db / META).write_text("["),
        ("error", META, 0, "corrupt", 2, 4),
    ),
    "never verified (an older mcopt)": (_forget_verified, ("ok", 2, 4)),
}


def run_case(base: Path, work: Path, name: str) -> dict[str, Any]:
    """One corruption: open without repair (the error), with repair (what it dropped), reopen,
    and apply the database to the tuning module (TVM reads what is left)."""
    from mcopt.targets.tune.apply import apply_database
    from mcopt.targets.tune.dbdir import _open

    db = work / name.replace(" ", "_").replace("\\", "")
    shutil.copytree(base, db)
    CASES[name][0](db)
    out: dict[str, Any] = {}
    try:
        _open(db, "cpu")
        out["error"] = None
    except TargetError as e:
        out["error"], out["error_type"] = str(e), type(e).__name__
    database, report = _open(db, "cpu", repair=True)
    out["dropped"] = [report.dropped_workloads, report.dropped_records]
    out["message"] = report.message()
    out["tvm"] = [len(database.get_all_tuning_records())]
    _, again = _open(db, "cpu")  # clean now: no error, nothing dropped
    out["again"] = [again.workloads, again.records, again.dropped]
    out["decoded_again"] = again.decoded
    apply_database(_tuning_mod(), db, "cpu")
    return out


_MOD: list[Any] = []


def _tuning_mod() -> Any:
    if not _MOD:
        from mcopt.ir import Graph, ttype
        from mcopt.targets.tune.scheduler import tuning_module

        g = Graph("tiny")
        x = g.add_input("x", ttype((1, 4, 6, 6)))
        r = g.add_node("relu", [x], {}).output
        g.outputs = [g.add_node("global_avg_pool", [r], {}).output]
        _MOD.append(tuning_module(g, "cpu"))
    return _MOD[0]


def _main(base: str, work: str, out_path: str) -> None:
    results = {}
    for name in CASES:
        print("CASE", name, flush=True)
        try:
            results[name] = run_case(Path(base), Path(work), name)
        except Exception as e:
            results[name] = {"exception": "".join(traceback.format_exception_only(e)).strip()}
    Path(out_path).write_text(json.dumps(results))


# --- tests ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def valid_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_valid_db(tmp_path_factory.mktemp("tunedb") / "db")


@pytest.fixture(scope="module")
def outcomes(valid_db: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    work = tmp_path_factory.mktemp("corrupt")
    out = work / "results.json"
    proc = subprocess.run(
        [sys.executable, __file__, str(valid_db), str(work), str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONFAULTHANDLER": "1"},
    )
    cases = [ln[5:] for ln in proc.stdout.splitlines() if ln.startswith("CASE ")]
    assert proc.returncode == 0, (
        f"the corruption run died (exit {proc.returncode}) in case {cases[-1] if cases else '?'}: "
        f"{proc.stderr[-2000:]}"
    )
    return json.loads(out.read_text())


@pytest.mark.parametrize("name", list(CASES))
def test_corrupted_database(name: str, outcomes: dict[str, Any]) -> None:
    got = outcomes[name]
    assert "exception" not in got, got
    expected = CASES[name][1]
    if expected[0] == "error":
        _, file, line, what, keep_w, keep_r = expected
        err = got["error"]
        assert err is not None, f"{name}: no error"
        assert got["error_type"] == "TuningDatabaseError" and "\n" not in err
        assert file in err and what in err, err
        assert (f"line {line}:" in err) if line else True, err
        assert "repair" in err
        assert got["again"][:2] == [keep_w, keep_r], got
        assert sum(got["dropped"]) >= 1 or file == META, got
        if file != META:
            assert "dropped" in got["message"], got
    else:
        _, keep_w, keep_r = expected
        assert got["error"] is None, got["error"]
        assert got["again"][:2] == [keep_w, keep_r] and got["dropped"] == [0, 0], got
    assert got["tvm"] == [got["again"][1]]  # TVM read exactly what the check kept
    assert got["again"][2] == 0 and got["decoded_again"] == 0, got  # verified once, not again


def test_valid_database_is_not_decoded_again(valid_db: Path) -> None:
    from mcopt.targets.tune.dbdir import check_database_dir

    report = check_database_dir(valid_db, "cpu")
    assert (report.workloads, report.records, report.decoded, report.problems) == (2, 4, 0, [])


def test_repair_renumbers_records_and_keeps_backups(valid_db: Path, tmp_path: Path) -> None:
    from mcopt.targets.tune.dbdir import check_database_dir

    db = tmp_path / "db"
    shutil.copytree(valid_db, db)
    good_records = _lines(db / R)
    _damage_module(db)  # workload 2 (relu) is bad: records 2 and 4 go with it
    lines = _lines(db / W)
    _write(db / W, [lines[1], lines[0]])  # and the good one moves to line 2: records renumbered
    recs = [b"[1," + r[3:] if r.startswith(b"[0,") else b"[0," + r[3:] for r in good_records]
    _write(db / R, recs)
    report = check_database_dir(db, "cpu", repair=True)
    assert (report.dropped_workloads, report.dropped_records) == (1, 2)
    assert [r[:3] for r in _lines(db / R)] == [b"[0,", b"[0,"]
    assert _lines(db / R) == [good_records[0], good_records[2]]
    assert (db / (W + ".bak")).read_bytes().count(b"\n") == 2
    assert report.decoded == 0  # the kept lines were verified before


def test_decoding_child_that_crashes_names_the_line(tmp_path: Path) -> None:
    from mcopt.targets.tune.db import decode_lines

    calls: list[Any] = []

    def fake_run(cmd: list[str], **kw: Any) -> Any:
        job = json.loads(kw["input"])
        calls.append(job["todo"])
        out = "".join(f"AT {k} {n}\nOK {k} {n}\n" for k, n in job["todo"] if (k, n) != ("r", 3))
        if ["r", 3] in job["todo"]:  # TVM segfaults on record line 4
            out = "AT w 0\nOK w 0\nAT r 3\n"
            return subprocess.CompletedProcess(cmd, -11, out, "")
        return subprocess.CompletedProcess(cmd, 0, out + "DONE\n", "")

    bad_w, bad_r = decode_lines(tmp_path / W, tmp_path / R, [0], [0], [3, 5], run=fake_run)
    assert bad_w == {} and bad_r == {3: "TVM crashes reading it (exit -11)"}
    assert calls == [[["w", 0], ["r", 3], ["r", 5]], [["r", 5]]]


def test_tune_and_apply_database_pass_repair_through(valid_db: Path, tmp_path: Path) -> None:
    from mcopt.targets.tune.apply import apply_database

    db = tmp_path / "db"
    shutil.copytree(valid_db, db)
    _insert(R, 0, b'{"not": "a record"}')(db)
    with pytest.raises(TuningDatabaseError, match=r"record\.json' line 1: not a tuning record"):
        apply_database(_tuning_mod(), db, "cpu")
    _, report = apply_database(_tuning_mod(), db, "cpu", repair=True)
    assert "dropped 0 workload line(s) and 1 record line(s)" in report.message()


if __name__ == "__main__":
    _main(*sys.argv[1:4])
