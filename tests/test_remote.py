"""RPC: build, upload, run and time models on TVM RPC servers started by the test on 127.0.0.1 —
a host server, a tracker handing out devices by key, and the emulated aarch64 runtime as a device."""

from __future__ import annotations

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")

import mcopt.targets.arm.builder  # noqa: E402,F401  (registers the arm targets)
from mcopt import interpreter  # noqa: E402
from mcopt.api import load  # noqa: E402
from mcopt.errors import TargetError  # noqa: E402
from mcopt.testing import zoo  # noqa: E402

pytestmark = pytest.mark.tvm


@pytest.fixture(scope="module")
def tiny() -> tuple[object, np.ndarray, list[np.ndarray]]:
    g = load(zoo.tiny_cnn())
    x = np.random.default_rng(1).standard_normal(g.inputs[0].shape).astype(np.float32)
    return g, x, interpreter.run(g, [x])


def _close(outs: list[np.ndarray], ref: list[np.ndarray]) -> None:
    assert len(outs) == len(ref)
    for o, r in zip(outs, ref):
        assert o.shape == r.shape
        err = float(np.abs(o.astype(np.float64) - r).max()) / max(float(np.abs(r).max()), 1e-6)
        assert err < 1e-4, f"relative error {err:.2e}"


def test_run_remote_host_server(tiny, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A loopback host server: a compiled model and an exported library are uploaded, run and
    timed (the stock ``python -m tvm.exec.rpc_server``)."""
    from mcopt.targets.relax.builder import build
    from mcopt.targets.tune.rpc import LocalRPCServer, run_remote

    g, x, ref = tiny
    model = build(g)
    with LocalRPCServer(max_lifetime_s=300).start() as server:
        outs, timings = run_remote(model, "127.0.0.1", server.port, inputs=[x], number=3)
        _close(outs, ref)
        assert timings["median_ms"] > 0 and timings["library_bytes"] > 0
        lib = model.export_library(tmp_path / "model.so")
        outs, t2 = run_remote(str(lib), "127.0.0.1", server.port, inputs=[x], number=0)
        _close(outs, ref)
        assert "median_ms" not in t2
    assert server.proc is None


def test_run_remote_through_tracker(tiny) -> None:  # type: ignore[no-untyped-def]
    """A server registered with a local tracker under a key, like a device in a farm; a Graph
    is built for the host CPU and run on the device the tracker hands out (inputs by name)."""
    pytest.importorskip("tornado", reason="TVM's RPC tracker needs tornado")
    from mcopt.targets.tune.rpc import LocalRPCServer, LocalTracker, run_remote

    g, x, ref = tiny
    with LocalTracker(max_lifetime_s=300).start() as tracker:
        addr = (tracker.host, tracker.port)
        with LocalRPCServer(key="host-cpu", tracker=addr, single_process=True).start():
            assert tracker.free_servers("host-cpu") == 1
            outs, timings = run_remote(
                g, tracker.host, tracker.port, key="host-cpu",
                inputs={g.inputs[0].name: x}, target="cpu", number=1,
            )  # fmt: skip
    _close(outs, ref)
    assert "host-cpu" in timings["server"]


def test_run_remote_unreachable_is_one_line() -> None:
    from mcopt.targets.tune.rpc import connect, free_port

    with pytest.raises(TargetError, match="cannot reach the RPC server"):
        connect("127.0.0.1", free_port(), session_timeout=5)


def test_emulated_aarch64_rpc_server(tiny) -> None:  # type: ignore[no-untyped-def]
    """The emulated aarch64 runtime as an RPC server (the way a phone is used): mcopt builds for
    ARM, uploads, runs and times the model there; outputs match the host reference."""
    from mcopt.targets.arm.emulate import start_emulated_rpc_server, unavailable_reason

    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    from mcopt.targets.tune.rpc import run_remote

    g, x, ref = tiny
    with start_emulated_rpc_server(max_lifetime_s=600) as server:
        # a Graph: built for ARM here (cross-linked), then uploaded to the aarch64 "device"
        outs, timings = run_remote(
            g, server.host, server.port, inputs=[x], target="arm", number=1, repeat=1
        )
    _close(outs, ref)
    assert timings["median_ms"] > 0


@pytest.mark.slow
def test_emulated_stock_rpc_server_via_tracker(tiny) -> None:  # type: ignore[no-untyped-def]
    """``python -m tvm.exec.rpc_server`` itself under qemu (its worker re-launches the wrapper via
    sys.executable), registered with a tracker like a device in a farm."""
    pytest.importorskip("tornado", reason="TVM's RPC tracker needs tornado")
    from mcopt.targets.arm.emulate import start_emulated_rpc_server, unavailable_reason

    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    from mcopt.targets.arm.builder import build_arm
    from mcopt.targets.tune.rpc import LocalTracker, run_remote

    g, x, ref = tiny
    model = build_arm(g, "arm:a53")
    with LocalTracker(max_lifetime_s=900).start() as tracker:
        with start_emulated_rpc_server(
            key="aarch64-emu", tracker=(tracker.host, tracker.port), single_process=False
        ):
            outs, timings = run_remote(
                model, tracker.host, tracker.port, key="aarch64-emu", inputs=[x], number=1
            )
    _close(outs, ref)
    assert "aarch64-emu" in timings["server"]
