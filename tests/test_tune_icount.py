"""Tuning an ARM target without a device: candidates are measured by the aarch64 instructions
they execute under qemu-user with the counting plugin (:class:`mcopt.targets.tune.measure.
IcountRunner`), and the database says so (``cost`` in its metadata file).

The tuning test needs ``scripts/setup_icount.sh`` (qemu-user, the plugin) and the cross linker,
and skips cleanly without them (CI); the error and database tests need neither. No timing
asserts.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")

from mcopt.errors import TargetError, TuningDatabaseError  # noqa: E402
from mcopt.targets.arm import icount  # noqa: E402
from mcopt.targets.arm.builder import CROSS_CXX  # noqa: E402

pytestmark = pytest.mark.tvm

TARGET = "arm:neoverse-n1"
FAST = {"strategy": "replay-trace", "cost_model": "random"}
ICOUNT_COST = {"measurer": "icount", "unit": "instructions", "qemu_cpu": "neoverse-n1"}


def _conv_graph() -> Any:
    """conv3x3 + bias + relu, then global average pooling (as in test_tune.py): three tasks,
    the conv as the conv2d_nchwc template."""
    from mcopt.ir import Graph, ttype

    rng = np.random.default_rng(0)
    g = Graph("tiny")
    x = g.add_input("x", ttype((1, 4, 10, 10)))
    # a first conv reads the NCHW image with a pre-scheduled kernel (not a tuning task): the
    # 3x3 conv after it is the conv2d_nchwc template task (as in test_tune.py)
    w0 = (rng.standard_normal((4, 4, 1, 1)) * 0.3).astype(np.float32)
    x = g.add_node("conv2d", [x, g.const(w0)], {}).output
    w = g.const((rng.standard_normal((8, 4, 3, 3)) * 0.3).astype(np.float32))
    b = g.const(rng.standard_normal(8).astype(np.float32))
    c = g.add_node("conv2d", [x, w, b], {"pads": (1, 1, 1, 1)}).output
    r = g.add_node("relu", [c], {}).output
    g.outputs = [g.add_node("global_avg_pool", [r], {}).output]
    return g


def _conv_onnx(path: Path) -> Path:
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(0).standard_normal((8, 4, 3, 3)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c"], ["y"]),
        ],
        "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 10, 10])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 10, 10])],
        [numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _no_qemu(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tool lookup finds no qemu-aarch64 (as on a machine without scripts/setup_icount.sh);
    the cross linker is not needed to get as far as the check."""
    real = shutil.which

    def which(cmd: str, *args: Any, **kwargs: Any) -> str | None:
        return None if Path(str(cmd)).name == icount.QEMU else real(cmd, *args, **kwargs)

    monkeypatch.setattr(shutil, "which", which)
    monkeypatch.setattr("mcopt.targets.tune.tuner.require_toolchain", lambda spec: None)


def test_missing_qemu_is_a_one_line_error_before_any_work(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from mcopt.targets.tune.tuner import tune

    _no_qemu(monkeypatch)
    db = tmp_path / "db"
    with pytest.raises(TargetError) as e:
        tune(_conv_graph(), TARGET, trials=2, db=db, **FAST)
    msg = str(e.value)
    assert len(msg.splitlines()) == 1, msg
    assert "scripts/setup_icount.sh" in msg and "--rpc" in msg and "qemu" in msg
    assert not db.exists()  # checked before the database directory is made


def test_cli_missing_qemu(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from mcopt.cli import main

    _no_qemu(monkeypatch)
    model = _conv_onnx(tmp_path / "conv.onnx")
    assert main(["tune", str(model), "--target", TARGET, "--db", str(tmp_path / "db")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("mcopt: error:") and len(err.splitlines()) == 1, err
    assert "scripts/setup_icount.sh" in err and "--rpc" in err


def test_database_says_its_measurer_and_is_not_mixed(tmp_path: Path) -> None:
    from mcopt.targets.tune.dbdir import (
        META_FILE,
        check_database_dir,
        cost_info,
        db_measurer,
        merge_databases,
    )

    counted, timed = tmp_path / "counted", tmp_path / "timed"
    check_database_dir(counted, TARGET, create=True, cost=cost_info("icount", qemu_cpu="n1"))
    check_database_dir(timed, TARGET, create=True, device="rpc board@host:9190")
    meta = json.loads((counted / META_FILE).read_text())
    assert meta["cost"] == {"measurer": "icount", "unit": "instructions", "qemu_cpu": "n1"}
    assert db_measurer(meta) == "icount"
    assert json.loads((timed / META_FILE).read_text())["cost"]["unit"] == "seconds"
    # tuning by run time into an instruction-count database, and the other way round
    with pytest.raises(TargetError, match="executed-instruction counts.*not run times") as e:
        check_database_dir(counted, TARGET, cost=cost_info("time"))
    assert str(counted / META_FILE) in str(e.value) and len(str(e.value).splitlines()) == 1
    with pytest.raises(TargetError, match="holds run times, not executed-instruction"):
        check_database_dir(timed, TARGET, cost=cost_info("icount", qemu_cpu="n1"))
    # a database from before the cost entry holds run times
    legacy = json.loads((timed / META_FILE).read_text())
    del legacy["cost"]
    (timed / META_FILE).write_text(json.dumps(legacy))
    with pytest.raises(TargetError, match="holds run times"):
        check_database_dir(timed, TARGET, cost=cost_info("icount", qemu_cpu="n1"))
    check_database_dir(timed, TARGET, cost=cost_info("time"))  # fine
    # building with either (no measurer given) is fine; merging them is not
    check_database_dir(counted, TARGET)
    with pytest.raises(TargetError, match="cannot merge"):
        merge_databases([counted, timed], tmp_path / "merged")


@pytest.mark.parametrize(
    "cost",
    [{"measurer": "stopwatch"}, "instructions", {"measurer": "icount", "unit": "seconds"}],
    ids=["unknown-measurer", "not-an-object", "wrong-unit"],
)
def test_corrupt_cost_entry_names_the_file(cost: Any, tmp_path: Path) -> None:
    from mcopt.targets.tune.dbdir import META_FILE, check_database_dir, cost_info

    db = tmp_path / "db"
    check_database_dir(db, TARGET, create=True, cost=cost_info("icount", qemu_cpu="n1"))
    meta = json.loads((db / META_FILE).read_text())
    (db / META_FILE).write_text(json.dumps({**meta, "cost": cost}))
    with pytest.raises(TuningDatabaseError) as e:
        check_database_dir(db, TARGET, cost=cost_info("icount", qemu_cpu="n1"))
    msg = str(e.value)
    assert str(db / META_FILE) in msg and "cost" in msg and len(msg.splitlines()) == 1


_SKIP = icount.unavailable_reason() or (
    None if shutil.which(CROSS_CXX) else f"the cross linker {CROSS_CXX} is not installed"
)


@pytest.mark.slow  # ~2 min: every batch starts the emulated interpreter
@pytest.mark.skipif(_SKIP is not None, reason=str(_SKIP))
def test_tune_arm_by_instruction_count(tmp_path: Path) -> None:
    from mcopt.targets.arm.builder import build_arm
    from mcopt.targets.tune.dbdir import META_FILE, RECORD_FILE
    from mcopt.targets.tune.tuner import tune

    g = _conv_graph()
    db = tmp_path / "db"
    events: list[Any] = []
    report = tune(g, TARGET, trials=4, db=db, progress=events.append, **FAST)
    assert report.measurer == "icount" and "qemu-aarch64 -cpu" in report.device
    assert report.trials >= 4 and "best instructions" in report.to_markdown()
    assert events and events[-1].unit == "instructions"

    meta = json.loads((db / META_FILE).read_text())
    assert meta["cost"]["measurer"] == "icount" and meta["cost"]["unit"] == "instructions"
    assert meta["cost"]["qemu_cpu"] == "neoverse-n1"
    assert "baseline_instructions" in meta and "baseline_ms" not in meta
    assert "template_instructions" in meta  # the conv template's seed record
    counts = [
        float(s) for ln in (db / RECORD_FILE).read_text().splitlines() for s in json.loads(ln)[1][1]
    ]
    assert len(counts) >= 4
    # instruction counts: whole numbers, one per record, at least the call from Python
    assert all(c.is_integer() and c > 100 for c in counts)
    for t in report.tasks:
        assert t.best_ms is None and t.best_instructions is not None
        assert t.best_instructions.is_integer()

    # a rerun with the same budget measures nothing
    again = tune(g, TARGET, trials=4, db=db, **FAST)
    assert again.skipped

    # the database applies to the ARM build (the same tasks: planned lowering)
    model = build_arm(g, TARGET, db=db)
    rep = model.tuning_report
    assert not rep.missing and len(rep.applied) + len(rep.default_faster) == len(report.tasks)
    if model.can_run:
        from mcopt import interpreter

        x = np.random.default_rng(3).standard_normal((1, 4, 10, 10)).astype(np.float32)
        (ref,) = interpreter.run(g, {"x": x})
        (out,) = model.run(x)
        np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)


def test_icount_runner_counts_a_batch_in_one_process_and_survives_a_crash(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A candidate that crashes the guest is a failed measurement; the candidates after it are
    counted again in a new process (the fake counter stands in for qemu)."""
    from tvm.s_tir import meta_schedule as ms

    from mcopt.targets.tune.measure import IcountRunner

    calls: list[list[str]] = []

    def fake_count(jobs: list[Any], **kw: Any) -> list[dict[str, Any]]:
        assert kw["partial"] and kw["cpu"] == "neoverse-n1"
        calls.append([j.name for j in jobs])
        rows = []
        for j in jobs:
            assert j.kind == "kernel" and j.n == 1
            assert [a.shape for a in j.inputs] == [(2, 3), (4,)]
            assert j.inputs[0].dtype == np.float32 and j.inputs[1].dtype == np.int8
            if j.path.endswith("bad.so"):
                rows.append({"name": j.name, "kind": j.kind, "error": "exit -11: crashed"})
                return rows
            rows.append({"name": j.name, "per_inference": 1000.0 + len(rows)})
        return rows

    monkeypatch.setattr("mcopt.targets.arm.icount.count_instructions", fake_count)
    args = [ms.arg_info.TensorInfo("float32", [2, 3]), ms.arg_info.TensorInfo("int8", [4])]
    paths = ["a.so", "bad.so", "c.so", "d.so"]
    inputs = [ms.runner.RunnerInput(p, "cpu", args) for p in paths]
    results = [f.result() for f in IcountRunner("neoverse-n1").run(inputs)]
    assert calls == [[f"candidate {k}" for k in range(4)], ["candidate 2", "candidate 3"]]
    assert [list(map(float, r.run_secs)) if r.run_secs else None for r in results] == [
        [1000.0],
        None,
        [1000.0],
        [1001.0],
    ]
    assert "crashed" in results[1].error_msg
