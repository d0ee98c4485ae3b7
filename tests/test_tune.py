"""Autotuning (targets/tune/: tuner, scheduler, measure, progress, apply, dbdir, space):
MetaSchedule tasks from the fused graph, the per-device JSON database (reuse, target check,
corrupt files, interrupted runs, merging), applying records at build time, the conv2d_nchwc
template as design space, RPC on loopback.

Tuning runs use very few trials (replay-trace search, random cost model) so they stay fast;
the interrupted-run, fresh-process and RPC tests are marked slow.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")

from mcopt import interpreter  # noqa: E402
from mcopt.errors import OptionError, TargetError  # noqa: E402
from mcopt.ir import Graph, ttype  # noqa: E402

pytestmark = pytest.mark.tvm

RNG = np.random.default_rng(0)
FAST = {"strategy": "replay-trace", "cost_model": "random"}


def _rand(*shape: int, scale: float = 1.0) -> np.ndarray:
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


def _conv_graph(channels: int = 8) -> Graph:
    """conv3x3 + bias + relu, then global average pooling: three tuning tasks (the conv as the
    conv2d_nchwc template, the pooling, the final reshape)."""
    g = Graph("tiny")
    x = g.add_input("x", ttype((1, 4, 10, 10)))
    # a first conv reads the NCHW image with a pre-scheduled kernel (no to_nchwc pass): not a
    # tuning task; the 3x3 conv after it is the conv2d_nchwc template task
    x = g.add_node("conv2d", [x, g.const(_rand(8, 4, 1, 1, scale=0.3))], {}).output
    w = g.const(_rand(channels, 8, 3, 3, scale=0.3))
    b = g.const(_rand(channels))
    c = g.add_node("conv2d", [x, w, b], {"pads": (1, 1, 1, 1)}).output
    r = g.add_node("relu", [c], {}).output
    g.outputs = [g.add_node("global_avg_pool", [r], {}).output]
    return g


def _build_with_db(g: Graph, db: Path) -> tuple[Any, Any]:
    """What builder.build(graph, db=...) does: fuse, apply the records, schedule the rest."""
    from tvm import relax

    from mcopt.targets.cpu.schedule import cpu_schedule_pass
    from mcopt.targets.registry import get_target
    from mcopt.targets.tune.apply import apply_database
    from mcopt.targets.tune.scheduler import tuning_module

    spec = get_target("cpu")
    mod, report = apply_database(tuning_module(g, spec), db, spec)
    with spec.tvm_target():
        mod = cpu_schedule_pass(spec.vector_lanes(32), spec.num_cores)(mod)
    ex = tvm.compile(mod, target=spec.tvm_target())
    return relax.VirtualMachine(ex, tvm.cpu()), report


@pytest.fixture(scope="module")
def tuned(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from mcopt.targets.tune.tuner import tune

    g = _conv_graph()
    db = tmp_path_factory.mktemp("tune") / "db"
    events: list[Any] = []
    report = tune(g, "cpu", trials=6, db=db, progress=events.append, **FAST)
    return {"graph": g, "db": db, "report": report, "events": events}


# --- tuning and the database ----------------------------------------------------------------
def test_tuner_still_exports_the_names_of_the_split_files() -> None:
    """tuner.py was split by job: its public names import from it as before, and are the
    objects of the files that now hold them (also through ``mcopt.targets``' lazy names)."""
    import mcopt.targets as targets
    from mcopt.targets.tune import apply, dbdir, measure, progress, scheduler, tuner

    homes = {
        apply: ["ApplyReport", "apply_database", "build_with_database", "database_pass",
                "task_summary"],
        dbdir: ["check_database_dir", "host_device", "merge_databases", "open_database"],
        measure: ["check_tracker", "make_builder", "make_runner"],
        progress: ["ProgressEvent", "RichProgress"],
        scheduler: ["CommittingScheduler", "extract_tasks", "tuning_module"],
    }  # fmt: skip
    for mod, names in homes.items():
        for name in names:
            assert getattr(tuner, name) is getattr(mod, name), name
    assert all(hasattr(tuner, name) for name in tuner.__all__)
    for name in ("apply_database", "merge_databases", "check_database_dir"):
        assert getattr(targets, name) is getattr(tuner, name)


def test_tune_writes_a_database_per_device(tuned: dict[str, Any]) -> None:
    from mcopt.targets.registry import get_target

    db, report = tuned["db"], tuned["report"]
    assert {"database_workload.json", "database_tuning_record.json", "mcopt_tuning.json"} <= {
        p.name for p in db.iterdir()
    }
    meta = json.loads((db / "mcopt_tuning.json").read_text())
    assert meta["target"] == json.loads(str(get_target("cpu").tvm_target()))
    assert meta["device"]
    assert report.trials == 6 and report.budget == 6
    assert len(report.tasks) == 3
    assert [t.template for t in report.tasks].count("conv2d_nchwc") == 1
    assert sum(t.records_after for t in report.tasks) >= 1
    assert any(t.best_ms is not None and t.best_ms > 0 for t in report.tasks)
    assert "| task |" in report.to_markdown()
    lines = (db / "database_tuning_record.json").read_text().splitlines()
    assert len(lines) == 6 + 1  # every measurement, and the template seed, appended as it arrives


def test_progress_reports_trials_and_best_latency(tuned: dict[str, Any]) -> None:
    events = tuned["events"]
    assert events, "no progress events"
    done = [e.trials_done for e in events]
    assert done == sorted(done) and done[-1] == 6
    assert all(e.trials_total == 6 for e in events)
    assert any(e.best_ms for e in events)


def test_apply_database_builds_correct_code(tuned: dict[str, Any]) -> None:
    g = tuned["graph"]
    vm, report = _build_with_db(g, tuned["db"])
    assert len(report.applied) + len(report.default_faster) == 3 and not report.missing
    assert "kernel(s) tuned" in report.message()
    x = _rand(1, 4, 10, 10)
    (ref,) = interpreter.run(g, [x])
    got = vm["main"](tvm.runtime.tensor(x)).numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)


def test_records_slower_than_the_default_schedule_are_not_used(
    tuned: dict[str, Any], tmp_path: Path
) -> None:
    from mcopt.targets.tune.apply import apply_database
    from mcopt.targets.tune.scheduler import tuning_module

    db = tmp_path / "db"
    shutil.copytree(tuned["db"], db)
    meta_path = db / "mcopt_tuning.json"
    meta = json.loads(meta_path.read_text())
    assert len(meta["baseline_ms"]) == 2  # the default schedule of each task was measured
    mod = tuning_module(tuned["graph"])
    for value, field in ((1e9, "applied"), (0.0, "default_faster")):
        meta["baseline_ms"] = {k: value for k in meta["baseline_ms"]}
        meta_path.write_text(json.dumps(meta))
        _, report = apply_database(mod, db, "cpu")
        # the template's records are never compared with a baseline: the template is one of them
        assert len(getattr(report, field)) == (3 if field == "applied" else 2), report


def test_rerun_with_the_same_database_skips_finished_work(tuned: dict[str, Any]) -> None:
    from mcopt.targets.tune.tuner import tune

    again = tune(tuned["graph"], "cpu", trials=4, db=tuned["db"], progress=False, **FAST)
    assert again.skipped and again.trials == 0  # nothing measured again
    assert [t.records_before for t in again.tasks] == [t.records_after for t in again.tasks]


def test_missing_records_are_reported(tuned: dict[str, Any]) -> None:
    from mcopt.targets.tune.apply import apply_database
    from mcopt.targets.tune.scheduler import tuning_module

    other = _conv_graph(channels=16)  # different shapes: no records
    _, report = apply_database(tuning_module(other), tuned["db"], "cpu")
    assert report.missing and not report.applied
    assert "no records for" in report.message() and "\n" not in report.message()


def _other_cpu() -> Any:
    from mcopt.targets.registry import TargetSpec, get_target, register_target

    try:
        return get_target("cpu-test-other")
    except OptionError:
        spec = TargetSpec(
            "cpu-test-other",
            "llvm",
            lambda: tvm.target.Target({"kind": "llvm", "mcpu": "haswell", "num-cores": 1}),
        )
        return register_target(spec)


def test_database_of_another_target_is_a_one_line_error(tuned: dict[str, Any]) -> None:
    from mcopt.targets.tune.apply import apply_database
    from mcopt.targets.tune.dbdir import open_database
    from mcopt.targets.tune.scheduler import tuning_module
    from mcopt.targets.tune.tuner import tune

    spec = _other_cpu()
    with pytest.raises(TargetError, match="holds records for target .*haswell") as ei:
        open_database(tuned["db"], spec)
    assert "\n" not in str(ei.value)
    with pytest.raises(TargetError, match="holds records for target"):
        apply_database(tuning_module(tuned["graph"], spec), tuned["db"], spec)
    with pytest.raises(TargetError, match="holds records for target"):
        tune(tuned["graph"], spec, trials=1, db=tuned["db"], progress=False)


def test_missing_database_directory(tmp_path: Path) -> None:
    from mcopt.targets.tune.dbdir import open_database

    with pytest.raises(TargetError, match="no tuning database in"):
        open_database(tmp_path / "nope", "cpu")


def test_corrupt_files_name_the_file(tuned: dict[str, Any], tmp_path: Path) -> None:
    from mcopt.targets.tune.dbdir import open_database

    db = tmp_path / "db"
    shutil.copytree(tuned["db"], db)
    rec = db / "database_tuning_record.json"
    lines = rec.read_text().splitlines()
    rec.write_text("\n".join([lines[0], "{not json", *lines[1:]]) + "\n")
    with pytest.raises(TargetError, match=r"corrupt tuning database file .*record\.json.* line 2"):
        open_database(db, "cpu")
    (db / "mcopt_tuning.json").write_text("[")
    with pytest.raises(TargetError, match=r"corrupt tuning database file .*mcopt_tuning\.json"):
        open_database(db, "cpu")


def test_truncated_last_line_of_an_interrupted_run_is_dropped(
    tuned: dict[str, Any], tmp_path: Path
) -> None:
    from mcopt.targets.tune.dbdir import open_database

    db = tmp_path / "db"
    shutil.copytree(tuned["db"], db)
    rec = db / "database_tuning_record.json"
    good = rec.read_text()
    rec.write_text(good + good.splitlines()[0][:40])  # killed in the middle of a write
    database = open_database(db, "cpu")
    assert len(database.get_all_tuning_records()) == len(good.splitlines())
    assert rec.read_text() == good


def test_merge_databases(tuned: dict[str, Any], tmp_path: Path) -> None:
    from mcopt.targets.tune.dbdir import merge_databases, open_database

    copy = tmp_path / "copy"
    shutil.copytree(tuned["db"], copy)
    out = merge_databases([tuned["db"], copy], tmp_path / "merged")
    n = len(open_database(tuned["db"], "cpu").get_all_tuning_records())
    assert len(open_database(out, "cpu").get_all_tuning_records()) == n  # no duplicates
    vm, report = _build_with_db(tuned["graph"], out)
    assert len(report.applied) + len(report.default_faster) == 3
    meta = json.loads((copy / "mcopt_tuning.json").read_text())
    meta["target"]["mcpu"] = "haswell"
    (copy / "mcopt_tuning.json").write_text(json.dumps(meta))
    with pytest.raises(TargetError, match="cannot merge .*copy"):
        merge_databases([tuned["db"], copy], tmp_path / "merged2")


def test_rpc_options_are_checked_before_any_work(tmp_path: Path) -> None:
    from mcopt.targets.tune.tuner import tune

    g = _conv_graph()
    with pytest.raises(OptionError, match="host:port"):
        tune(g, trials=1, db=tmp_path, rpc="localhost", key="k")
    with pytest.raises(OptionError, match="--key"):
        tune(g, trials=1, db=tmp_path, rpc="localhost:9190")
    with pytest.raises(OptionError, match="trials"):
        tune(g, trials=-1, db=tmp_path)
    with pytest.raises(TargetError, match="cannot reach the RPC tracker at 127.0.0.1:"):
        tune(g, trials=1, db=tmp_path, rpc=f"127.0.0.1:{_free_port()}", key="k")


# --- builder overhead -----------------------------------------------------------------------
def test_light_tensor_intrin_import_registers_x86_only() -> None:
    from tvm.s_tir import TensorIntrin

    from mcopt.targets.tune.space import install_tensor_intrin

    full = "tvm.s_tir.tensor_intrin.cuda" in sys.modules  # another test imported it all
    install_tensor_intrin("llvm")
    import tvm.s_tir.tensor_intrin  # noqa: F401  (what MetaSchedule does: now a no-op)

    assert TensorIntrin.get("dot_16x4_vnni") is not None
    assert full or "tvm.s_tir.tensor_intrin.cuda" not in sys.modules  # the slow part was skipped


# --- the conv2d_nchwc template as design space -----------------------------------------------
CONV = ((1, 16, 12, 12), (32, 16, 3, 3), 1, 1)


def _template_module() -> tuple[Any, np.ndarray, np.ndarray, np.ndarray, Any]:
    """A Relax module calling the unscheduled (template-marked) blocked conv + bias + relu."""
    from tvm import relax

    from mcopt.targets.cpu.kernels import layout
    from mcopt.targets.cpu.kernels.epilogue import Epilogue
    from mcopt.targets.cpu.kernels.params import choose_conv_params
    from mcopt.targets.cpu.kernels.target_info import host_target
    from mcopt.targets.tune.space import template_conv_workload

    ds, ws, s, p = CONV
    params = choose_conv_params(ds, ws, s, p, 1, host_target())
    func = template_conv_workload(
        ds, ws, s, p, 1, host_target(), params, Epilogue(True, False, "relu")
    )
    w, b = _rand(*ws, scale=0.2), _rand(ws[0])
    bb = relax.BlockBuilder()
    n, c, h, wd = ds
    x = relax.Var("x", relax.TensorType((n, c // params.ic_bn, h, wd, params.ic_bn), "float32"))
    with bb.function("main", [x]):
        gv = bb.add_func(func.with_attr("global_symbol", "conv2d_nchwc"), "conv2d_nchwc")
        wp = relax.const(layout.pack_conv_weight(w, params.ic_bn, params.oc_kbn))
        bp = relax.const(layout.pack_bias(b, params.oc_bn))
        out_ty = relax.TensorType((n, ws[0] // params.oc_bn, h, wd, params.oc_bn), "float32")
        y = bb.emit(relax.call_tir(gv, [x, wp, bp], out_ty))
        bb.emit_func_output(y)
    return bb.get(), w, b, _rand(*ds), params


def _conv_ref(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    from mcopt.ir import Graph as G

    g = G("ref")
    xi = g.add_input("x", ttype(x.shape))
    c = g.add_node("conv2d", [xi, g.const(w), g.const(b)], {"pads": (1, 1, 1, 1)}).output
    g.outputs = [g.add_node("relu", [c], {}).output]
    return interpreter.run(g, [x])[0]


def test_template_space_reproduces_the_template_and_samples_tiles() -> None:
    from tvm import s_tir

    from mcopt.targets.cpu.kernels.conv2d import conv2d_nchwc
    from mcopt.targets.cpu.kernels.epilogue import Epilogue
    from mcopt.targets.cpu.kernels.layout import pack_nchwc, unpack_nchwc
    from mcopt.targets.cpu.kernels.target_info import host_target
    from mcopt.targets.tune.space import template_seed_trace

    mod, w, b, x, params = _template_module()
    wl = tvm.IRModule({"main": mod["conv2d_nchwc"]})
    sch = template_seed_trace(wl)
    ds, ws, s, p = CONV
    # the seed is the hand-written schedule with the analytic tile sizes as decisions (up to
    # unit loops, kept so that every decision replays): same loops, same numbers
    ref = conv2d_nchwc(ds, ws, s, p, 1, host_target(), params, Epilogue(True, False, "relu"))
    assert ref.script().count("T.vectorized") == sch.mod["main"].script().count("T.vectorized")
    assert ref.script().count("T.parallel") == sch.mod["main"].script().count("T.parallel")
    samples = [i for i in sch.trace.insts if i.kind.name == "SamplePerfectTile"]
    assert samples, "the template's tile sizes are not in the design space"
    inner = sorted(int(sch.trace.decisions[i][1]) for i in samples)
    assert inner == sorted([params.reg_c, params.reg_n])
    # every decision of the sampled tiles replays (MetaSchedule draws them at random)
    opts = []
    for inst in samples:
        d0, d1 = (int(v) for v in sch.trace.decisions[inst])
        opts.append([[d0 * d1 // k, k] for k in range(1, d0 * d1 + 1) if d0 * d1 % k == 0])
    for combo in itertools.product(*opts):
        tr = sch.trace
        for inst, dec in zip(samples, combo, strict=True):
            tr = tr.with_decision(inst, dec, remove_postproc=True)
        tr.apply_to_schedule(s_tir.Schedule(wl), remove_postproc=True)
    # another decision of the same trace is another valid schedule of the same conv
    inst = samples[-1]
    old = [int(v) for v in sch.trace.decisions[inst]]
    total = old[0] * old[1]
    alt = next(d for d in range(2, total + 1) if total % d == 0 and d != old[1])
    sch2 = s_tir.Schedule(wl)
    sch.trace.with_decision(inst, [total // alt, alt], remove_postproc=True).apply_to_schedule(
        sch2, remove_postproc=True
    )
    lib = tvm.compile(sch2.mod, target=host_target())
    dev = tvm.cpu()
    from mcopt.targets.cpu.kernels import layout

    args = [
        pack_nchwc(x, params.ic_bn),
        layout.pack_conv_weight(w, params.ic_bn, params.oc_kbn),
        layout.pack_bias(b, params.oc_bn),
    ]
    out_shape = (1, ws[0] // params.oc_bn, ds[2], ds[3], params.oc_bn)
    tv = [tvm.runtime.tensor(a, dev) for a in args] + [
        tvm.runtime.tensor(np.zeros(out_shape, np.float32), dev)
    ]
    lib["main"](*tv)
    np.testing.assert_allclose(
        unpack_nchwc(tv[-1].numpy()), _conv_ref(x, w, b), rtol=1e-4, atol=1e-4
    )


def test_untuned_template_is_scheduled_by_the_template_pass() -> None:
    from tvm import relax

    from mcopt.targets.cpu.kernels.layout import pack_nchwc, unpack_nchwc
    from mcopt.targets.tune.scheduler import extract_tasks, tuning_module
    from mcopt.targets.tune.space import template_schedule_pass

    mod, w, b, x, params = _template_module()
    fused = tuning_module(mod)
    (task,) = extract_tasks(fused)  # the unscheduled template is the one tuning task
    assert task.task_name == "conv2d_nchwc"
    scheduled = template_schedule_pass()(fused)
    assert "tirx.is_scheduled" in scheduled["conv2d_nchwc"].attrs
    vm = relax.VirtualMachine(tvm.compile(scheduled, target="llvm"), tvm.cpu())
    got = vm["main"](tvm.runtime.tensor(pack_nchwc(x, params.ic_bn))).numpy()
    np.testing.assert_allclose(unpack_nchwc(got), _conv_ref(x, w, b), rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_template_task_is_seeded_and_tuned(tmp_path: Path) -> None:
    from tvm import relax

    from mcopt.targets.cpu.kernels.layout import pack_nchwc, unpack_nchwc
    from mcopt.targets.tune.apply import apply_database
    from mcopt.targets.tune.scheduler import tuning_module
    from mcopt.targets.tune.tuner import tune

    mod, w, b, x, params = _template_module()
    report = tune(mod, "cpu", trials=2, db=tmp_path, progress=False, **FAST)
    (task,) = report.tasks
    assert task.template == "conv2d_nchwc"
    assert task.records_before == 0 and task.records_after == 3  # seed + 2 trials
    fused, applied = apply_database(tuning_module(mod), tmp_path, "cpu")
    assert applied.applied == ["conv2d_nchwc"]
    ex = tvm.compile(fused, target="llvm")
    vm = relax.VirtualMachine(ex, tvm.cpu())
    got = vm["main"](tvm.runtime.tensor(pack_nchwc(x, params.ic_bn))).numpy()
    np.testing.assert_allclose(unpack_nchwc(got), _conv_ref(x, w, b), rtol=1e-4, atol=1e-4)


# --- slow: interrupted run, fresh process, RPC -------------------------------------------------
_TUNE_SCRIPT = """
import sys
from mcopt.ir import Graph
sys.path.insert(0, {tests!r})
from test_tune import _conv_graph, FAST
from mcopt.targets.tune.tuner import tune
r = tune(_conv_graph(), "cpu", trials=int(sys.argv[2]), db=sys.argv[1], progress=False,
         trials_per_iter=2, **FAST)
print("TRIALS", r.trials, sum(t.records_before for t in r.tasks))
"""


@pytest.mark.slow
def test_interrupted_run_keeps_records_and_resumes(tmp_path: Path) -> None:
    script = tmp_path / "t.py"
    script.write_text(_TUNE_SCRIPT.format(tests=str(Path(__file__).parent)))
    db = tmp_path / "db"
    rec = db / "database_tuning_record.json"
    proc = subprocess.Popen([sys.executable, str(script), str(db), "40"], start_new_session=True)
    try:
        deadline = time.time() + 400
        while time.time() < deadline and proc.poll() is None:
            if rec.exists() and len(rec.read_text().splitlines()) >= 2:
                break
            time.sleep(1)
        assert proc.poll() is None, "tuning finished before it could be interrupted"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    kept = len(rec.read_text().splitlines())
    assert kept >= 2
    out = subprocess.run(
        [sys.executable, str(script), str(db), str(kept + 2)],
        capture_output=True, text=True, check=True, timeout=600,
    )  # fmt: skip
    trials, before = out.stdout.split("TRIALS")[1].split()
    assert int(before) >= 1 and int(trials) <= 2


@pytest.mark.slow
def test_database_reused_in_a_fresh_process(tuned: dict[str, Any]) -> None:
    code = (
        f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r});"
        "from test_tune import _conv_graph, _build_with_db;"
        f"vm, r = _build_with_db(_conv_graph(), {str(tuned['db'])!r}); print('APPLIED', len(r.applied) + len(r.default_faster))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "APPLIED 3" in out.stdout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_rpc_tuning_on_loopback(tmp_path: Path) -> None:
    from mcopt.targets.tune.measure import check_tracker
    from mcopt.targets.tune.tuner import tune

    port = _free_port()
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tvm.exec.rpc_tracker",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--port-end",
                str(port + 1),
            ],
            start_new_session=True,
        )
    ]
    try:
        time.sleep(3)
        sp = _free_port()
        procs.append(
            subprocess.Popen(
                [
                    sys.executable, "-m", "tvm.exec.rpc_server", "--tracker", f"127.0.0.1:{port}",
                    "--key", "loopback", "--host", "127.0.0.1", "--port", str(sp), "--port-end", str(sp + 1),
                ],
                start_new_session=True,
            )
        )  # fmt: skip
        deadline = time.time() + 120
        while True:  # wait until the server has registered with the tracker
            try:
                check_tracker(f"127.0.0.1:{port}", "loopback")
                break
            except TargetError:
                if time.time() > deadline:
                    raise
                time.sleep(2)
        with pytest.raises(TargetError, match="no RPC server with key 'nokey'.*keys: loopback"):
            tune(_conv_graph(), trials=1, db=tmp_path, rpc=f"127.0.0.1:{port}", key="nokey")
        report = tune(
            _conv_graph(), "cpu", trials=2, db=tmp_path, rpc=f"127.0.0.1:{port}", key="loopback",
            progress=False, **FAST,
        )  # fmt: skip
        assert report.trials == 2
        assert any(t.best_ms for t in report.tasks)
        assert report.device.startswith("rpc loopback@")
    finally:
        for p in reversed(procs):
            os.killpg(p.pid, signal.SIGTERM)
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
