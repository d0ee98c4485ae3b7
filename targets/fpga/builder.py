"""The ``fpga`` target: an integer-only fixed-point design as C for HLS tools, plus a folding/resource/
latency estimate; compiled here with gcc and run bit-exact against the numpy integer reference.

Pipeline: the graph must already be fixed point (the ``fixed-point`` pass: ``fx_quantize`` -> integer
``fx_*`` ops -> ``fx_dequantize``; :func:`mcopt.passes.fixed_point.assert_integer_only` is checked).
:func:`build_fpga` then

1. chooses the folding (PE x SIMD per layer, FINN-style; :mod:`mcopt.targets.fpga.folding`) for a
   target throughput under a DSP budget and estimates DSPs, BRAM, cycles and latency;
2. emits C99 (:mod:`mcopt.targets.fpga.hls_c`): one function per layer, weights as const arrays,
   ``#pragma HLS`` hints from the folding, an integer-only top function and a float host wrapper;
3. compiles it with gcc into a shared library and wraps it in :class:`FpgaModel` (``run``,
   ``run_integer``, ``benchmark``, ``export_library``), the object ``mcopt.optimize`` expects.

No TVM is imported here. ``mcopt.optimize(model, target="fpga", passes=["cleanup", "fixed-point"])``
reaches :func:`build_fpga` through ``TargetSpec.builder`` (see :data:`FPGA`).
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mcopt.errors import MCoptError, ShapeError, TargetError
from mcopt.ir.core import Graph
from mcopt.targets.fpga.folding import FoldingPlan, FpgaDevice, plan_folding
from mcopt.targets.fpga.hls_c import CSource, emit_c
from mcopt.targets.registry import TargetSpec, register_target
from mcopt.targets.toolchain import HOST_CC, require_compiler

CFLAGS = ("-O2", "-std=c99", "-fPIC", "-Wall", "-Wno-unknown-pragmas", "-Wno-unused-variable")


def _cc() -> str:
    return require_compiler(HOST_CC, "the fpga target's C build")


def compile_c(src: CSource, outdir: str | os.PathLike[str]) -> Path:
    """Write ``<prefix>.c/.h`` into `outdir` and build ``lib<prefix>_<hash>.so``; a compiler error is a
    one-line TargetError naming the file."""
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    c = out / f"{src.prefix}.c"
    c.write_text(src.source)
    (out / f"{src.prefix}.h").write_text(src.header)
    # dlopen caches by path: a rebuilt library under an old name would silently load the old code,
    # so the file name carries a hash of the source
    digest = hashlib.sha1(src.source.encode()).hexdigest()[:12]
    lib = out / f"lib{src.prefix}_{digest}.so"
    if lib.exists():
        return lib
    cmd = [_cc(), *CFLAGS, "-shared", "-o", str(lib), str(c), "-lm"]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        first = next((ln for ln in proc.stderr.splitlines() if "error" in ln), proc.stderr[:300])
        raise TargetError(f"fpga: gcc failed on {c}: {first.strip()}")
    return lib


class FpgaModel:
    """The compiled fixed-point design (gcc build of the generated C) with its folding estimate."""

    target = "fpga"

    def __init__(self, graph: Graph, src: CSource, plan: FoldingPlan, workdir: Path) -> None:
        self.graph, self.src, self.plan, self.workdir = graph, src, plan, workdir
        self.input_specs = [(v.name, v.shape, v.dtype) for v in graph.inputs]
        self.output_names = [v.name for v in graph.outputs]
        self.library = compile_c(src, workdir)
        self._lib = ctypes.CDLL(str(self.library))
        f32p = ctypes.POINTER(ctypes.c_float)
        self._run = self._lib[f"{src.prefix}_run"]
        self._run.restype = ctypes.c_int
        self._run.argtypes = [f32p] * (len(src.inputs) + len(src.outputs))
        self._top = self._lib[f"{src.prefix}_top"]
        self._top.restype = None
        self._top.argtypes = [ctypes.c_void_p] * (len(src.inputs) + len(src.outputs))

    # --- inputs -----------------------------------------------------------------------------------
    def _bind(self, args: Sequence[Any], named: Mapping[str, Any]) -> list[np.ndarray]:
        from mcopt.inputs import bind_arrays

        if len(args) == 1 and isinstance(args[0], list | tuple):
            args = tuple(args[0])
        specs = [(n, tuple(s), "float32") for n, s, *_ in self.input_specs]
        return bind_arrays(specs, args, named, who="the fpga design")

    # --- running ----------------------------------------------------------------------------------
    def run(self, *inputs: Any, **named: Any) -> list[np.ndarray]:
        """Float in, float out: the C host wrapper (quantize, integer top per sample, dequantize)."""
        xs = self._bind(inputs, named)
        ys = [np.empty(sh, np.float32) for _, sh, _, _ in self.src.outputs]
        f32p = ctypes.POINTER(ctypes.c_float)
        rc = self._run(*(a.ctypes.data_as(f32p) for a in (*xs, *ys)))
        if rc != 0:
            raise TargetError(f"fpga: {self.src.prefix}_run returned {rc}")
        return ys

    __call__ = run

    def run_integer(self, *qinputs: np.ndarray) -> list[np.ndarray]:
        """Integer in, integer out: the HLS top function on already-quantized inputs (all samples)."""
        if len(qinputs) != len(self.src.inputs):
            raise ShapeError(
                f"fpga: the top function takes {len(self.src.inputs)} input(s), got {len(qinputs)}"
            )
        qs = []
        for (name, shape, _, dt), q in zip(self.src.inputs, qinputs):
            q = np.asarray(q)
            if q.shape != tuple(shape) or q.dtype != np.dtype(dt):
                raise ShapeError(
                    f"fpga: integer input {name!r} must be {dt}{list(shape)}, got {q.dtype}{list(q.shape)}"
                )
            qs.append(np.ascontiguousarray(q))
        outs = [np.empty(sh, dt) for _, sh, _, dt in self.src.outputs]
        for n in range(self.src.batch):
            xs = [np.ascontiguousarray(q[n]) for q in qs]
            ys = [np.empty(o.shape[1:], o.dtype) for o in outs]
            self._top(*(a.ctypes.data for a in (*xs, *ys)))
            for o, y in zip(outs, ys):
                o[n] = y
        return outs

    def benchmark(self, inputs: Any, number: int = 20, repeat: int = 5) -> dict[str, float]:
        """Wall-clock of the gcc-compiled C on this CPU (a functional model, not FPGA timing: see
        :attr:`estimate` for cycles and latency at the FPGA clock)."""
        xs = self._bind((inputs,), {})
        ys = [np.empty(sh, np.float32) for _, sh, _, _ in self.src.outputs]
        f32p = ctypes.POINTER(ctypes.c_float)
        ptrs = [a.ctypes.data_as(f32p) for a in (*xs, *ys)]
        self._run(*ptrs)
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            for _ in range(number):
                self._run(*ptrs)
            times.append((time.perf_counter() - t0) / number * 1e3)
        times.sort()
        return {
            "median_ms": times[len(times) // 2],
            "min_ms": times[0],
            "mean_ms": float(np.mean(times)),
            "fpga_latency_us": self.plan.totals()["latency_us"],
        }

    @property
    def estimate(self) -> dict[str, Any]:
        """The folding and resource / cycle estimate (see :mod:`mcopt.targets.fpga.folding`)."""
        return self.plan.to_dict()

    def export_library(self, path: str | os.PathLike[str]) -> Path:
        """Write the design. A directory path (no suffix) gets ``<prefix>.c``, ``<prefix>.h``,
        ``lib<prefix>.so``, ``estimate.json``, ``estimate.md``; a file path (e.g. ``model.so``) gets
        the shared library and the sources beside it in ``<stem>_fpga/``."""
        p = Path(path)
        if p.suffix:
            p.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(self.library, p)
            stem = p.name.split(".")[0].lstrip(".") or "model"
            self._write_sources(p.parent / f"{stem}_fpga")
            return p
        self._write_sources(p)
        shutil.copyfile(self.library, p / f"lib{self.src.prefix}.so")
        return p

    def _write_sources(self, d: Path) -> None:
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{self.src.prefix}.c").write_text(self.src.source)
        (d / f"{self.src.prefix}.h").write_text(self.src.header)
        (d / "estimate.json").write_text(json.dumps(self.estimate, indent=2, default=str))
        (d / "estimate.md").write_text(self.plan.to_markdown())


def build_fpga(
    graph: Graph,
    *,
    device: FpgaDevice | None = None,
    target_fps: float | None = None,
    prefix: str = "model",
    workdir: str | os.PathLike[str] | None = None,
) -> FpgaModel:
    """Fold, emit C, compile with gcc; `graph` must be an integer-only fixed-point graph."""
    from mcopt.passes.fixed_point import assert_integer_only

    if not any(n.op == "fx_quantize" for n in graph.nodes):
        raise TargetError(
            f"fpga: graph {graph.name!r} is not fixed point; run the 'fixed-point' pass first "
            "(e.g. passes=['cleanup', 'fixed-point'])"
        )
    try:
        assert_integer_only(graph)
    except MCoptError as e:
        raise TargetError(f"fpga: {e}") from None
    plan = plan_folding(graph, device, target_fps)
    src = emit_c(graph, plan, prefix)
    wd = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="mcopt_fpga_"))
    return FpgaModel(graph, src, plan, wd)


def _no_tvm_target() -> Any:
    import tvm

    return tvm.target.Target({"kind": "c"})


FPGA = register_target(
    TargetSpec(
        name="fpga",
        kind="c",
        make=_no_tvm_target,
        host_runnable=True,
        description="integer-only fixed point: C for HLS (gcc-compiled here) + folding/DSP/BRAM/cycle estimate",
        builder=build_fpga,
        toolchain=HOST_CC,
    ),
    replace=True,
)

__all__ = ["FPGA", "FpgaDevice", "FpgaModel", "build_fpga", "compile_c"]
