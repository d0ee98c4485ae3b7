"""Run and time compiled models on remote devices over TVM RPC, and start local RPC servers/trackers.

Method (the way TVM drives phones and board farms): build here, ``export_library`` the model (cross-
linked for ARM), ``upload`` it to an RPC server, ``load_module`` it there, wrap it in a Relax VM bound
to the remote device, copy the inputs over, run ``main`` and copy the outputs back; timing uses
the VM's ``time_evaluator`` on the remote side (so network time is not counted). A server is reached
directly (``host:port``) or through an RPC tracker that hands out devices by ``key``.

:class:`LocalRPCServer` / :class:`LocalTracker` start ``python -m tvm.exec.rpc_server`` /
``rpc_tracker`` on 127.0.0.1 as child processes with a bounded lifetime (for tests and for the
emulated aarch64 device, see :func:`mcopt.targets.arm.emulate.start_emulated_rpc_server`).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mcopt.errors import TargetError

LOCALHOST = "127.0.0.1"

# One-process RPC server: what ``tvm.exec.rpc_server`` runs in its PopenWorker child, without the
# parent (under qemu every extra Python start that imports TVM costs 10-15 s).
_SERVER_DRIVER = """
import sys
from tvm.rpc.server import PopenRPCServerState
host, port, tracker, key = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
addr = (tracker.rsplit(":", 1)[0], int(tracker.rsplit(":", 1)[1])) if tracker else None
state = PopenRPCServerState(host, port, port + 1, tracker_addr=addr, key=key, silent=True)
state.thread.join()
"""


def free_port(host: str = LOCALHOST) -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


class _ChildProcess:
    """A python -m tvm.exec.* child in its own process group, killed (group-wide) on stop()."""

    label = "process"

    def __init__(
        self,
        python: str | None,
        env: Mapping[str, str] | None,
        max_lifetime_s: float,
        start_timeout: float,
    ) -> None:
        self.python = python or sys.executable
        if env is None:  # a server/tracker needs only TVM's runtime library (as on a device)
            env = {**os.environ, "TVM_USE_RUNTIME_LIB": "1"}
        self.env = dict(env)
        self.max_lifetime_s = max_lifetime_s
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self._log = tempfile.TemporaryFile()

    def _spawn(self, args: list[str]) -> None:
        cmd = [self.python, *args]
        if self.max_lifetime_s > 0 and shutil.which("timeout"):
            cmd = ["timeout", "-s", "KILL", str(int(self.max_lifetime_s)), *cmd]
        self.proc = subprocess.Popen(
            cmd,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def _log_tail(self) -> str:
        self._log.seek(0)
        lines = [ln for ln in self._log.read().decode(errors="replace").splitlines() if ln.strip()]
        return lines[-1] if lines else "no output"

    def _wait(self, ready: Any) -> None:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise TargetError(
                    f"the {self.label} exited with code {self.proc.returncode}: {self._log_tail()}"
                )
            if ready():
                return
            time.sleep(0.25)
        self.stop()
        raise TargetError(f"the {self.label} did not come up in {self.start_timeout:.0f} s")

    def stop(self) -> None:
        """Kill the child and everything it started (its process group)."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=5)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(timeout=5)
        self.proc = None

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __del__(self) -> None:  # pragma: no cover - safety net
        try:
            self.stop()
        except Exception:
            pass


class LocalTracker(_ChildProcess):
    """A TVM RPC tracker on 127.0.0.1 (``python -m tvm.exec.rpc_tracker``)."""

    label = "RPC tracker"

    def __init__(
        self,
        port: int | None = None,
        *,
        python: str | None = None,
        max_lifetime_s: float = 3600,
        start_timeout: float = 60,
    ) -> None:
        super().__init__(python, None, max_lifetime_s, start_timeout)
        self.host = LOCALHOST
        self.port = port or free_port()

    def start(self) -> LocalTracker:
        self._spawn(
            ["-m", "tvm.exec.rpc_tracker", "--host", self.host, "--port", str(self.port),
             "--port-end", str(self.port + 1), "--silent"]
        )  # fmt: skip
        self._wait(lambda: _port_open(self.host, self.port))
        return self

    def summary(self) -> dict[str, Any]:
        """The tracker's summary (queue and registered servers by key)."""
        from tvm import rpc

        return dict(rpc.connect_tracker(self.host, self.port).summary())

    def free_servers(self, key: str) -> int:
        """How many servers are registered under ``key`` (0 until they have come up)."""
        try:
            info = self.summary()
        except Exception:
            return 0
        return sum(1 for s in info.get("server_info", []) if str(s.get("key", "")).endswith(key))


class LocalRPCServer(_ChildProcess):
    """A TVM RPC server on 127.0.0.1 run by ``python`` (this interpreter by default; the emulated
    aarch64 wrapper for an ARM "device"), listening on ``port`` and, with ``tracker`` and ``key``,
    registered with a tracker. ``single_process=True`` runs TVM's server loop directly instead of
    ``python -m tvm.exec.rpc_server`` (which starts a second Python for its worker). The child
    is killed after ``max_lifetime_s`` at the latest (coreutils ``timeout``)."""

    def __init__(
        self,
        python: str | None = None,
        port: int | None = None,
        *,
        key: str | None = None,
        tracker: tuple[str, int] | None = None,
        env: Mapping[str, str] | None = None,
        max_lifetime_s: float = 3600,
        start_timeout: float = 120,
        label: str = "host",
        single_process: bool = False,
    ) -> None:
        super().__init__(python, env, max_lifetime_s, start_timeout)
        self.host = LOCALHOST
        self.port = port or free_port()
        self.key = key
        self.tracker = tracker
        self.label = f"{label} RPC server"
        self.single_process = single_process

    def start(self) -> LocalRPCServer:
        """Start the server and wait until it listens (or is registered with the tracker)."""
        if self.tracker is not None and not self.key:
            raise TargetError("an RPC server registered with a tracker needs a key")
        tracker = f"{self.tracker[0]}:{self.tracker[1]}" if self.tracker is not None else ""
        if self.single_process:
            args = ["-c", _SERVER_DRIVER, self.host, str(self.port), tracker, self.key or ""]
        else:  # the stock server (re-launches sys.executable for its worker process)
            args = ["-m", "tvm.exec.rpc_server", "--host", self.host, "--port", str(self.port),
                    "--port-end", str(self.port + 1)]  # fmt: skip
            if tracker:
                args += ["--tracker", tracker, "--key", str(self.key)]
        self._spawn(args)
        if self.tracker is not None:
            th, tp = self.tracker

            def registered() -> bool:
                from tvm import rpc

                try:
                    info = rpc.connect_tracker(th, tp).summary()
                except Exception:
                    return False
                return any(
                    str(s.get("key", "")).endswith(str(self.key))
                    for s in info.get("server_info", [])
                )

            self._wait(registered)
        else:
            self._wait(lambda: _port_open(self.host, self.port))
        return self


def connect(
    host: str, port: int, key: str | None = None, *, session_timeout: float = 600, priority: int = 1
) -> Any:
    """An RPC session: directly to a server at ``host:port``, or (with ``key``) to a device handed
    out by the tracker at ``host:port``. Failures are one-line TargetErrors."""
    from tvm import rpc

    where = f"tracker {host}:{port} (key {key!r})" if key else f"RPC server {host}:{port}"
    try:
        if key:
            return rpc.connect_tracker(host, port).request(
                key, priority=priority, session_timeout=session_timeout
            )
        return rpc.connect(host, port, session_timeout=session_timeout)
    except Exception as e:
        msg = [ln for ln in str(e).splitlines() if ln.strip()]
        raise TargetError(
            f"cannot reach the {where}: {msg[-1] if msg else type(e).__name__}"
        ) from None


def _build_graph(graph: Any, target: Any) -> Any:
    """Compile a Graph for ``target`` with the builder that target needs."""
    from mcopt.targets.registry import get_target

    spec = get_target(target)
    builder = getattr(spec, "builder", None)
    if builder is not None:
        return builder(graph, spec)
    from mcopt.targets.arm.builder import build_arm, is_arm_target

    if is_arm_target(spec):
        return build_arm(graph, spec)
    if spec.kind == "cuda":
        from mcopt.targets.cuda.builder import build_cuda

        return build_cuda(graph, spec)
    from mcopt.targets.relax.builder import build

    return build(graph, spec)


def _library(
    model: Any, target: Any, workdir: Path
) -> tuple[Path, list[tuple[str, tuple[int, ...], str]], str]:
    from mcopt.ir.core import Graph

    if isinstance(model, Graph):
        model = _build_graph(model, target if target is not None else "cpu")
    if isinstance(model, (str, os.PathLike)):
        path = Path(model)
        if not path.is_file():
            raise TargetError(f"no compiled library at {str(path)!r}")
        return path, [], "cuda" if target is not None and "cuda" in str(target) else "cpu"
    if not hasattr(model, "export_library"):
        raise TargetError(
            f"run_remote takes a Graph, a compiled model or a library path, not {type(model).__name__}"
        )
    path = Path(model.export_library(workdir / "model.so"))
    device = getattr(model, "device_kind", "cpu")
    return path, list(getattr(model, "input_specs", [])), device


def run_remote(
    model: Any,
    host: str = LOCALHOST,
    port: int = 9090,
    key: str | None = None,
    inputs: Sequence[Any] | Mapping[str, Any] = (),
    *,
    target: Any = None,
    number: int = 10,
    repeat: int = 3,
    min_repeat_ms: int = 0,
    session_timeout: float = 600,
) -> tuple[list[np.ndarray], dict[str, Any]]:
    """Build (for a Graph: for ``target``, default ``"cpu"``), upload, run and time ``model`` on an
    RPC device; returns ``(outputs, timings)``.

    ``model``: an mcopt Graph, a compiled model (``CompiledModel``, ``ArmCompiledModel``,
    ``CudaCompiledModel``) or the path of an exported library. ``key`` set: ``host:port`` is a
    tracker. ``number=0`` skips timing. Timings (ms, measured on the device by ``time_evaluator``)
    are labelled with the server; under the qemu emulator they mean nothing for real hardware."""
    import tvm
    from tvm import relax

    from mcopt.targets.runtime import bind_inputs

    with tempfile.TemporaryDirectory(prefix="mcopt-rpc-") as tmp:
        lib, specs, device_kind = _library(model, target, Path(tmp))
        args = bind_inputs(specs, [inputs] if isinstance(inputs, Mapping) else list(inputs), {})
        sess = connect(host, port, key, session_timeout=session_timeout)
        remote_name = f"mcopt_{uuid.uuid4().hex[:12]}.so"
        where = f"{host}:{port}" + (f" (key {key!r})" if key else "")
        t0 = time.perf_counter()
        try:
            sess.upload(str(lib), remote_name)
            upload_s = time.perf_counter() - t0
            rlib = sess.load_module(remote_name)
            dev = sess.cuda(0) if device_kind == "cuda" else sess.cpu(0)
            vm = relax.VirtualMachine(rlib, dev)
            rargs = [tvm.runtime.tensor(a, dev) for a in args]
            t1 = time.perf_counter()
            outs = _flatten(vm["main"](*rargs))
            first_s = time.perf_counter() - t1
            timings: dict[str, Any] = {
                "server": where,
                "upload_s": upload_s,
                "first_run_wall_ms": first_s * 1e3,
                "library_bytes": lib.stat().st_size,
            }
            if number > 0:
                ft = vm.time_evaluator(
                    "main", dev, number=number, repeat=repeat, min_repeat_ms=min_repeat_ms
                )
                res = np.asarray(ft(*rargs).results, dtype=np.float64) * 1e3
                timings.update(
                    median_ms=float(np.median(res)),
                    mean_ms=float(res.mean()),
                    std_ms=float(res.std()),
                    min_ms=float(res.min()),
                    number=number,
                    repeat=repeat,
                )
        except TargetError:
            raise
        except Exception as e:
            msg = [ln for ln in str(e).splitlines() if ln.strip()]
            raise TargetError(
                f"running {lib.name} on {where} failed: {msg[-1] if msg else type(e).__name__}"
            ) from None
        finally:
            try:
                sess.remove(remote_name)
            except Exception:
                pass
    return outs, timings


def _flatten(obj: Any) -> list[np.ndarray]:
    if hasattr(obj, "numpy"):
        return [obj.numpy()]
    out: list[np.ndarray] = []
    for item in obj:
        out.extend(_flatten(item))
    return out


__all__ = [
    "LocalRPCServer",
    "LocalTracker",
    "connect",
    "free_port",
    "run_remote",
]
