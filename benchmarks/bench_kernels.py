"""Kernel benchmark: mcopt's scheduled fp32 CPU kernels per layer vs onnxruntime and untuned TVM.

For representative CNN layers (batch 1): mcopt's kernel (blocked layout, analytic parameters, no
tuning) against onnxruntime on a one-node ONNX model of the same layer (Conv/Gemm + activation,
fused by onnxruntime), TVM 0.27's default build of ``relax.op.nn.conv2d``/``matmul`` (legalized
only), and the machine's sgemm peak (numpy/OpenBLAS 2048^3 matmul) and theoretical FMA peak.

Timing: mcopt and TVM with ``time_evaluator``; onnxruntime with ``session.run`` (which includes
~10-30 us of per-call overhead, shown on its own as ``ort call overhead``, and, for convs, the
NCHW <-> NCHWc reorders that onnxruntime inserts around a lone conv: compare with the
"mcopt + layout" column, which adds mcopt's own NCHW <-> NCHWc conversions). On a machine shared
with other jobs the minimum is the better estimate of the kernel's speed; medians are shown too.

    python benchmarks/bench_kernels.py                       # every layer
    python benchmarks/bench_kernels.py --layers r50_3x3_56,dense_2048 --skip-tvm
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import THREADS, markdown_table, max_rel_err, ort_session, write_outputs  # noqa: E402

os.environ.setdefault("OPENBLAS_NUM_THREADS", str(THREADS))
import numpy as np  # noqa: E402


@dataclass(frozen=True)
class Layer:
    name: str
    kind: str  # conv | dw | dense
    c_in: int  # conv/dw: input channels; dense: K
    c_out: int  # conv: output channels; dense: N
    hw: int = 1
    k: int = 1
    stride: int = 1
    pad: int = 0
    act: str | None = "relu"

    @property
    def out_hw(self) -> int:
        return (self.hw + 2 * self.pad - self.k) // self.stride + 1

    @property
    def flops(self) -> float:
        if self.kind == "dense":
            return 2.0 * self.c_in * self.c_out
        macs_per_out = self.k * self.k * (self.c_in if self.kind == "conv" else 1)
        return 2.0 * self.c_out * self.out_hw**2 * macs_per_out


LAYERS = [
    Layer("r50_3x3_64@56", "conv", 64, 64, 56, 3, 1, 1),
    Layer("r50_1x1_256-64@56", "conv", 256, 64, 56, 1, 1, 0),
    Layer("r50_3x3_256@14", "conv", 256, 256, 14, 3, 1, 1),
    Layer("r50_1x1_1024-256@14", "conv", 1024, 256, 14, 1, 1, 0),
    Layer("r50_3x3_512@7", "conv", 512, 512, 7, 3, 1, 1),
    Layer("stem_7x7s2_3-64@224", "conv", 3, 64, 224, 7, 2, 3),
    Layer("vgg_3x3_128@112", "conv", 128, 128, 112, 3, 1, 1),
    Layer("mbv2_dw3x3_144@56", "dw", 144, 144, 56, 3, 1, 1, "relu6"),
    Layer("mbv2_dw3x3_960@7", "dw", 960, 960, 7, 3, 1, 1, "relu6"),
    Layer("dense_2048-1000", "dense", 2048, 1000, act=None),
    Layer("dense_25088-4096", "dense", 25088, 4096, act="relu"),
]


def _weights(layer: Layer, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    if layer.kind == "dense":
        shape: tuple[int, ...] = (layer.c_out, layer.c_in)
    else:
        cin = layer.c_in if layer.kind == "conv" else 1
        shape = (layer.c_out, cin, layer.k, layer.k)
    fan_in = int(np.prod(shape[1:]))
    w = (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32)
    return w, rng.standard_normal(layer.c_out).astype(np.float32) * 0.1


def _input(layer: Layer, rng: np.random.Generator) -> np.ndarray:
    if layer.kind == "dense":
        return rng.standard_normal((1, layer.c_in)).astype(np.float32)
    return rng.standard_normal((1, layer.c_in, layer.hw, layer.hw)).astype(np.float32)


def onnx_model(layer: Layer, w: np.ndarray, b: np.ndarray) -> Any:
    from onnx import TensorProto, helper, numpy_helper

    x_shape = [1, layer.c_in] + ([] if layer.kind == "dense" else [layer.hw, layer.hw])
    if layer.kind == "dense":
        nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["z"], transB=1)]
    else:
        group = 1 if layer.kind == "conv" else layer.c_in
        pads = [layer.pad] * 4
        nodes = [
            helper.make_node(
                "Conv",
                ["x", "w", "b"],
                ["z"],
                kernel_shape=[layer.k] * 2,
                strides=[layer.stride] * 2,
                pads=pads,
                group=group,
            )
        ]
    if layer.act == "relu":
        nodes.append(helper.make_node("Relu", ["z"], ["y"]))
    elif layer.act == "relu6":
        lo = numpy_helper.from_array(np.array(0.0, np.float32), "lo")
        hi = numpy_helper.from_array(np.array(6.0, np.float32), "hi")
        nodes.append(helper.make_node("Clip", ["z", "lo", "hi"], ["y"]))
    else:
        nodes.append(helper.make_node("Identity", ["z"], ["y"]))
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")]
    if layer.act == "relu6":
        inits += [lo, hi]
    graph = helper.make_graph(
        nodes,
        layer.name,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def ort_timer(sess: Any, feeds: dict[str, np.ndarray]) -> tuple[Any, Any]:
    """(a burst timer returning the best ms per call of a few runs, the first output)."""
    out = sess.run(None, feeds)[0]
    t0 = time.perf_counter()
    sess.run(None, feeds)
    number = max(1, int(0.003 / max(time.perf_counter() - t0, 1e-6)))

    def burst() -> float:
        best = float("inf")
        for _ in range(3 * number):
            t = time.perf_counter()
            sess.run(None, feeds)
            best = min(best, time.perf_counter() - t)
        return best * 1e3

    return burst, out


def tvm_timer(mod: Any, dev: Any, args: list[Any]) -> Any:
    """A burst timer (best ms of 3 ``time_evaluator`` repeats of ~3 ms) for ``mod["main"]``."""
    t0 = time.perf_counter()
    mod["main"](*args)
    number = max(1, int(0.003 / max(time.perf_counter() - t0, 1e-6)))
    ev = mod.time_evaluator("main", dev, number=number, repeat=3)
    return lambda: float(min(ev(*args).results)) * 1e3


def interleave(timers: list[Any], budget_s: float) -> list[tuple[float, float]]:
    """Run the burst timers round-robin until ``budget_s`` is spent (at least 5 rounds), so that
    every contender sees the same machine load; (min, median) ms of each."""
    results: list[list[float]] = [[] for _ in timers]
    start = time.perf_counter()
    while len(results[0]) < 5 or (time.perf_counter() - start < budget_s and len(results[0]) < 200):
        for r, fn in zip(results, timers):
            r.append(fn())
    return [(min(r), float(np.median(r))) for r in results]


def mcopt_layer(
    layer: Layer, x: np.ndarray, w: np.ndarray, b: np.ndarray, target: Any, budget_s: float
) -> dict[str, Any]:
    """Compile, check and time mcopt's kernel for ``layer`` (plus its layout conversions)."""
    import tvm

    from mcopt.targets.cpu.kernels import layout
    from mcopt.targets.cpu.kernels.conv2d import conv2d_nchwc
    from mcopt.targets.cpu.kernels.dense import choose_dense_params, dense_packed
    from mcopt.targets.cpu.kernels.depthwise import choose_depthwise_params, depthwise_conv2d_nchwc
    from mcopt.targets.cpu.kernels.epilogue import Epilogue
    from mcopt.targets.cpu.kernels.params import choose_conv_params

    ep = Epilogue(bias=True, activation=layer.act)
    dev = tvm.cpu()
    t0 = time.perf_counter()
    if layer.kind == "dense":
        bn, _ = choose_dense_params(1, layer.c_out, layer.c_in, target)
        npad = -(-layer.c_out // bn) * bn
        wpad = np.zeros((npad, layer.c_in), np.float32)
        wpad[: layer.c_out] = w
        func = dense_packed(1, layer.c_out, layer.c_in, target, ep)
        args = [x, layout.pack_dense_weight(wpad, bn), b]
        out_shape: tuple[int, ...] = (1, layer.c_out)
        desc = f"bn={bn}"
        ibn = obn = 0
    else:
        if layer.kind == "conv":
            p = choose_conv_params(x.shape, w.shape, layer.stride, layer.pad, 1, target)
            func = conv2d_nchwc(x.shape, w.shape, layer.stride, layer.pad, 1, target, p, ep)
            ibn, obn = p.ic_bn, p.oc_bn
            wp = layout.pack_conv_weight(w, p.ic_bn, p.oc_kbn)
            desc = f"{p.reg_n}x{p.reg_c} tile" + (f", ic/{p.ic_chunk}" if p.ic_chunk else "")
            desc += ", rows inside" if p.oh_inner else ""
        else:
            ibn, reg_n = choose_depthwise_params(
                x.shape, (layer.k, layer.k), layer.stride, layer.pad, 1, target
            )
            obn = ibn
            func = depthwise_conv2d_nchwc(
                x.shape, (layer.k, layer.k), layer.stride, layer.pad, 1, target, ep
            )
            wp = layout.pack_depthwise_weight(w, ibn)
            desc = f"{reg_n} cols"
        args = [layout.pack_nchwc(x, ibn), wp, layout.pack_bias(b, obn)]
        out_shape = (1, layer.c_out // obn, layer.out_hw, layer.out_hw, obn)
    lib = tvm.compile(tvm.IRModule({"main": func}), target=target)
    compile_s = time.perf_counter() - t0
    targs = [tvm.runtime.tensor(np.ascontiguousarray(a), dev) for a in args]
    targs.append(tvm.runtime.tensor(np.zeros(out_shape, np.float32), dev))
    lib["main"](*targs)
    got = targs[-1].numpy()
    if layer.kind != "dense":
        got = layout.unpack_nchwc(got)
    row = {
        "compile_s": compile_s,
        "params": desc,
        "_out": got,
        "_timer": tvm_timer(lib.mod, dev, targs),
        "layout_ms": 0.0,
    }
    if layer.kind != "dense":  # the NCHW <-> NCHWc conversions at a graph's boundary
        cvt = 0.0
        for f, shp_in, shp_out in (
            (layout.nchw_to_nchwc(x.shape, ibn), x.shape, args[0].shape),
            (
                layout.nchwc_to_nchw((1, layer.c_out, layer.out_hw, layer.out_hw), obn),
                out_shape,
                (1, layer.c_out, layer.out_hw, layer.out_hw),
            ),
        ):
            m = tvm.compile(tvm.IRModule({"main": f}), target=target)
            a = [
                tvm.runtime.tensor(np.zeros(shp_in, np.float32), dev),
                tvm.runtime.tensor(np.zeros(shp_out, np.float32), dev),
            ]
            cvt += interleave([tvm_timer(m.mod, dev, a)], budget_s / 4)[0][0]
        row["layout_ms"] = cvt
    return row


def tvm_default_layer(
    layer: Layer, x: np.ndarray, w: np.ndarray, b: np.ndarray, target: Any, budget_s: float
) -> float:
    """TVM 0.27's default build (legalization only) of the same layer; min ms."""
    import tvm
    from tvm import relax

    bb = relax.BlockBuilder()
    xv = relax.Var("x", relax.TensorType(x.shape, "float32"))
    with bb.function("main", [xv]):
        with bb.dataflow():
            if layer.kind == "dense":
                z = bb.emit(relax.op.matmul(xv, relax.const(np.ascontiguousarray(w.T))))
                z = bb.emit(relax.op.add(z, relax.const(b)))
            else:
                groups = 1 if layer.kind == "conv" else layer.c_in
                z = bb.emit(
                    relax.op.nn.conv2d(
                        xv, relax.const(w), strides=layer.stride, padding=layer.pad, groups=groups
                    )
                )
                z = bb.emit(relax.op.add(z, relax.const(b.reshape(1, -1, 1, 1))))
            if layer.act == "relu":
                z = bb.emit(relax.op.nn.relu(z))
            elif layer.act == "relu6":
                z = bb.emit(relax.op.clip(z, 0.0, 6.0))
            gv = bb.emit_output(z)
        bb.emit_func_output(gv)
    ex = tvm.compile(bb.get(), target=target)
    vm = relax.VirtualMachine(ex, tvm.cpu())
    xt = tvm.runtime.tensor(x)
    t0 = time.perf_counter()
    vm["main"](xt)
    one = time.perf_counter() - t0
    repeat = max(1, min(10, int(budget_s / max(one, 1e-6))))
    res = vm.time_evaluator("main", tvm.cpu(), number=1, repeat=repeat)(xt).results
    return float(min(res)) * 1e3


def machine_peaks(lanes: int, cores: int) -> dict[str, float]:
    a = np.random.default_rng(0).standard_normal((2048, 2048)).astype(np.float32)
    a @ a
    best = min(_timed(lambda: a @ a) for _ in range(10))
    mhz = 0.0
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("cpu MHz"):
                mhz = max(mhz, float(line.split(":")[1]))
    except OSError:
        pass
    return {
        "sgemm_gflops": 2 * 2048**3 / best / 1e9,
        "theory_gflops": cores * lanes * 2 * 2 * mhz / 1e3,
        "mhz": mhz,
    }


def _timed(fn: Any) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


COLUMNS = [
    ("layer", "layer", ""),
    ("gflop", "GFLOP", ".3f"),
    ("params", "mcopt params", ""),
    ("mcopt_ms", "mcopt ms (min)", ".3f"),
    ("mcopt_med_ms", "mcopt ms (med)", ".3f"),
    ("mcopt_gflops", "mcopt GFLOP/s", ".1f"),
    ("mcopt_layout_ms", "mcopt + layout ms", ".3f"),
    ("ort_ms", "ORT ms (min)", ".3f"),
    ("ort_med_ms", "ORT ms (med)", ".3f"),
    ("ort_gflops", "ORT GFLOP/s", ".1f"),
    ("tvm_ms", "TVM default ms", ".1f"),
    ("vs_ort", "ORT/mcopt", ".2f"),
    ("pct_sgemm", "% sgemm peak", ".0f"),
    ("err", "max rel err", ".1e"),
]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--layers", default="", help="comma-separated layer names (default: all)")
    ap.add_argument("--skip-tvm", action="store_true", help="skip TVM's (slow) default build")
    ap.add_argument("--budget", type=float, default=2.0, help="seconds of timing per measurement")
    ap.add_argument("--out", default="", help="directory for kernels.json / kernels.md")
    opts = ap.parse_args(argv)

    from mcopt.targets.cpu.kernels.target_info import cpu_info, host_target

    target = host_target(THREADS)
    info = cpu_info(target)
    layers = LAYERS
    if opts.layers:
        wanted = opts.layers.split(",")
        layers = [la for la in LAYERS if la.name in wanted]
        if len(layers) != len(wanted):
            raise SystemExit(f"unknown layer(s); choose from {[la.name for la in LAYERS]}")
    peaks = machine_peaks(info.lanes, info.cores)
    from onnx import TensorProto, helper

    ident = helper.make_model(
        helper.make_graph(
            [helper.make_node("Identity", ["x"], ["y"])],
            "id",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
        ),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    ort_overhead = interleave(
        [ort_timer(ort_session(ident), {"x": np.zeros(1, np.float32)})[0]], 0.5
    )[0][0]

    rows = []
    for layer in layers:
        rng = np.random.default_rng(0)
        x = _input(layer, rng)
        w, b = _weights(layer, rng)
        ort_burst, ref = ort_timer(ort_session(onnx_model(layer, w, b)), {"x": x})
        row: dict[str, Any] = {"layer": layer.name, "gflop": layer.flops / 1e9}
        row.update(mcopt_layer(layer, x, w, b, target, opts.budget))
        got = row.pop("_out")
        (kmin, kmed), (ort_min, ort_med) = interleave([row.pop("_timer"), ort_burst], opts.budget)
        row["mcopt_ms"], row["mcopt_med_ms"] = kmin, kmed
        row["err"] = max_rel_err([ref], [got])
        row["mcopt_layout_ms"] = row["mcopt_ms"] + row.pop("layout_ms")
        row["mcopt_gflops"] = layer.flops / row["mcopt_ms"] / 1e6
        row["ort_ms"], row["ort_med_ms"] = ort_min, ort_med
        row["ort_gflops"] = layer.flops / ort_min / 1e6
        row["vs_ort"] = ort_min / row["mcopt_ms"]
        row["pct_sgemm"] = 100 * row["mcopt_gflops"] / peaks["sgemm_gflops"]
        if not opts.skip_tvm:
            row["tvm_ms"] = tvm_default_layer(layer, x, w, b, target, opts.budget)
        rows.append(row)
        print(
            f"{layer.name}: mcopt {row['mcopt_ms']:.3f} ms, ORT {ort_min:.3f} ms, "
            f"err {row['err']:.1e}",
            file=sys.stderr,
            flush=True,
        )
    table = markdown_table(rows, COLUMNS)
    note = (
        f"\n{THREADS} threads, target {target}. Machine: numpy/OpenBLAS sgemm 2048^3 "
        f"{peaks['sgemm_gflops']:.1f} GFLOP/s; theoretical {info.cores} cores x {info.lanes} "
        f"lanes x 2 FMA x 2 flop x {peaks['mhz'] / 1e3:.2f} GHz (nominal; boost is higher) = "
        f"{peaks['theory_gflops']:.0f} GFLOP/s; onnxruntime per-call overhead "
        f"{ort_overhead * 1e3:.0f} us (included in the ORT columns).\n"
    )
    print(table + note)
    if opts.out:
        write_outputs(Path(opts.out), "kernels", rows, table + note)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
