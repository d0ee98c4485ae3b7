"""Fixed point and dynamic fixed point: turn a float CNN into an integer-only graph (``fx_*`` ops).

Method. Every tensor is stored as Qm.n fixed point: ``real = q * 2**-n`` with ``q`` a signed
``bits``-bit integer (:mod:`mcopt.ops.fixed` has the op semantics and the bit-exact numpy references).

- ``fixed-point`` (default, ``dynamic=False``): **one shared format** for every activation and weight,
  Qm.n with ``n = frac_bits`` (given, or the largest n that represents the largest calibration
  magnitude of any activation or weight without overflow). This is the classic DSP-style fixed point.
- ``fixed-point:dynamic=true``: **dynamic fixed point** (Courbariaux et al., "Training deep neural
  networks with low precision multiplications", ICLR-W 2015; Gysel et al., "Ristretto:
  Hardware-oriented approximation of CNNs", 2016): each layer output and each layer's weights get their
  own number of fractional bits, ``n = floor(log2((2**(bits-1) - 1) / max|x|))`` with ``max|x|`` from
  calibration data (for a layer followed by ReLU, the range after the ReLU: negatives saturate and are
  then clipped to 0 anyway, so the result is identical and no range is wasted on them). With
  ``calib="mse"`` (default) n may grow by up to 3 bits beyond that when the squared quantization error
  on the calibration values (or the weights) is smaller: rare outliers saturate, the bulk is resolved
  finer (the MSE criterion of TensorRT/Ristretto-style range calibration).

The rewritten graph is ``fx_quantize -> integer ops -> fx_dequantize``: convolutions and dense layers
multiply-accumulate integers into an int32 accumulator (int64 when a worst-case bound
``sum_k |w_qk| * 2**(bits-1) + |b_q| + 2**shift`` does not fit 31 bits), the bias is stored in the
accumulator format (``n_x + n_w`` fractional bits), and the output is requantized by a rounding right
shift ``n_x + n_w - n_out`` with saturation. Residual adds align their operands by left shifts; average
pools divide by multiply-shift. :func:`assert_integer_only` checks that no float op remains between the
input quantize and the output dequantize. Weights become integer constants (int8/int16) carrying a
:class:`~mcopt.ir.types.FixedPoint` encoding (real storage: ``bits`` per weight).

Lossy: rounding and saturation. The pass reports the relative L2 error of the outputs against the float
graph on the calibration data, with the formats it chose, in a
:class:`~mcopt.pass_manager.FixedPointFormats` (``ctx.analyses.get(FixedPointFormats)``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from mcopt.errors import OptionError, PassError, VerifyError
from mcopt.interpreter import run_values
from mcopt.ir.core import Graph, Node, Value
from mcopt.ir.types import FixedPoint, TensorType
from mcopt.ops.fixed import avg_pool_multiplier, qrange, storage_dtype
from mcopt.pass_manager import FixedPointFormats, Pass, PassContext, register_pass

#: float ops that keep the fixed-point format of their input (pure data movement / monotone clamps)
_FORMAT_KEEPING = ("relu", "max_pool", "flatten", "reshape", "dropout", "identity")
#: integer data-movement ops allowed in an integer-only graph (besides the fx_* ops)
_INT_MOVES = ("flatten", "reshape", "identity")


def choose_frac_bits(max_abs: float, bits: int) -> int:
    """Most fractional bits n such that ``max_abs * 2**n <= 2**(bits-1) - 1`` (Ristretto's rule)."""
    hi = (1 << (bits - 1)) - 1
    if not np.isfinite(max_abs) or max_abs <= 0:
        return bits - 1
    return int(math.floor(math.log2(hi / max_abs)))


def quantize_weight(w: np.ndarray, bits: int, frac: int) -> np.ndarray:
    """Round-half-up and saturate a float weight to signed `bits` with `frac` fractional bits."""
    lo, hi = qrange(bits)
    q = np.floor(np.asarray(w, np.float64) * 2.0**frac + 0.5)
    return np.clip(q, lo, hi).astype(storage_dtype(bits))


def assert_integer_only(graph: Graph) -> None:
    """Raise VerifyError unless `graph` is integer-only between its quantize and dequantize ops.

    Allowed: ``fx_quantize`` reading a graph input, ``fx_dequantize`` producing a graph output, and
    any other node whose inputs and outputs are all signed-integer tensors."""
    outs = {id(v) for v in graph.outputs}
    for n in graph.nodes:
        if n.op == "fx_quantize":
            src = n.inputs[0]
            if src is None or src.producer is not None or src.is_const:
                raise VerifyError(
                    f"node {n.name!r} (fx_quantize) must read a graph input, reads %{getattr(src, 'name', None)}"
                )
            continue
        if n.op == "fx_dequantize":
            if id(n.output) not in outs:
                raise VerifyError(
                    f"node {n.name!r} (fx_dequantize) feeds other nodes: floats inside the integer graph"
                )
            continue
        for v in (*n.inputs, *n.outputs):
            if v is not None and not np.issubdtype(np.dtype(v.dtype), np.signedinteger):
                raise VerifyError(
                    f"node {n.name!r} ({n.op}) is not integer-only: %{v.name} is {v.type}"
                )


def best_frac_bits(sample: np.ndarray, bits: int, max_abs: float, extra: int = 3) -> int:
    """The n in ``[n_max, n_max + extra]`` minimizing the squared error of Qm.n on `sample`
    (more fractional bits saturate the rare largest values but resolve the bulk finer)."""
    n0 = choose_frac_bits(max_abs, bits)
    x = np.asarray(sample, np.float64).ravel()
    if not x.size:
        return n0
    lo, hi = qrange(bits)
    errs = []
    for n in range(n0, n0 + extra + 1):
        q = np.clip(np.floor(x * 2.0**n + 0.5), lo, hi) * 2.0**-n
        errs.append(float(np.sum((q - x) ** 2)))
    return n0 + int(np.argmin(errs))


_SAMPLE = 8192  # values kept per tensor and feed for the MSE format search


def _value_ranges(
    graph: Graph, feeds: list[Any], keep_outputs: int, rng: np.random.Generator
) -> tuple[dict[int, float], dict[int, np.ndarray], list]:
    """max |x| and a random subsample per non-constant value over `feeds`; plus the float outputs
    of the first `keep_outputs` feeds."""
    values = [*graph.inputs, *(o for n in graph.nodes for o in n.outputs)]
    ranges: dict[int, float] = {id(v): 0.0 for v in values}
    samples: dict[int, list[np.ndarray]] = {id(v): [] for v in values}
    outputs = []
    for i, feed in enumerate(feeds):
        outs, kept = run_values(graph, feed, keep=values)
        for v in values:
            a = np.asarray(kept[v.name]).ravel()
            if a.size:
                ranges[id(v)] = max(ranges[id(v)], float(np.max(np.abs(a))))
                samples[id(v)].append(a if a.size <= _SAMPLE else rng.choice(a, _SAMPLE))
        if i < keep_outputs:
            outputs.append([np.asarray(o, np.float64) for o in outs])
    merged = {k: np.concatenate(v) if v else np.zeros(0) for k, v in samples.items()}
    return ranges, merged, outputs


@register_pass
class FixedPointQuantize(Pass):
    """Fixed point Qm.n (one shared format) or dynamic fixed point (per-layer formats) -> an
    integer-only graph of ``fx_*`` ops. Lossy. Options: ``bits`` (8 or 16, activations),
    ``weight_bits`` (0: = bits), ``dynamic``, ``frac_bits`` / ``weight_frac_bits`` (shared mode; None:
    chosen from calibration), ``calib`` (dynamic mode: ``"max"`` = Ristretto's no-overflow rule,
    ``"mse"`` = the n in [n_max, n_max+3] with the least squared error on calibration values),
    ``headroom`` (dynamic mode: integer bits kept free above the calibration range for inputs beyond
    it; -1 = 1 bit at >= 12 bits, where precision is abundant, else 0), ``calib_batches`` (feeds
    used for ranges), ``error_batches`` (feeds the error is reported on)."""

    name = "fixed-point"
    lossless = False

    bits: int = 8
    weight_bits: int = 0
    dynamic: bool = False
    frac_bits: int | None = None
    weight_frac_bits: int | None = None
    calib_batches: int = 32
    error_batches: int = 4
    calib: str = "mse"
    headroom: int = -1

    def run(self, graph: Graph, ctx: PassContext) -> bool:
        wbits = self.weight_bits or self.bits
        for key, val in (("bits", self.bits), ("weight_bits", wbits)):
            if not 2 <= val <= 16:
                raise OptionError(f"fixed-point: option {key}={val} must be in [2, 16]")
        if any(n.op.startswith("fx_") for n in graph.nodes):
            return False  # already fixed point
        feeds = ctx.feeds(self.calib_batches)
        if not feeds:
            ctx.info("fixed-point: no calibration data; ranges come from random normal inputs")
            rng = ctx.rng(51)
            feeds = [
                {v.name: rng.standard_normal(v.shape).astype(v.dtype) for v in graph.inputs}
                for _ in range(4)
            ]
        if self.calib not in ("max", "mse"):
            raise OptionError(f"fixed-point: option calib={self.calib!r} must be 'max' or 'mse'")
        ranges, samples, float_outs = _value_ranges(graph, feeds, self.error_batches, ctx.rng(52))
        fmt = _Formats(graph, ranges, samples, self, wbits)
        info = _rewrite(graph, fmt, self.bits, wbits)
        assert_integer_only(graph)
        errs = []
        for feed, ref in zip(feeds, float_outs):
            got, _ = run_values(graph, feed)
            for r, g in zip(ref, got):
                den = float(np.linalg.norm(r)) or 1.0
                errs.append(float(np.linalg.norm(np.asarray(g, np.float64) - r)) / den)
        rec = ctx.analyses.put(
            FixedPointFormats(
                mode="dynamic" if self.dynamic else "shared",
                bits=self.bits,
                weight_bits=wbits,
                layers=info["layers"],
                rel_error=max(errs) if errs else float("nan"),
            )
        )
        ctx.info(
            f"fixed-point ({rec.mode}, {self.bits}-bit activations, {wbits}-bit weights): "
            f"{len(rec.layers)} integer layers, output rel. L2 error {rec.rel_error:.3g}"
        )
        return True


class _Formats:
    """Fractional bits for activations and weights (shared or per layer)."""

    def __init__(
        self,
        graph: Graph,
        ranges: dict[int, float],
        samples: dict[int, np.ndarray],
        p: FixedPointQuantize,
        wbits: int,
    ):
        self.samples = samples
        self.graph, self.ranges, self.p, self.wbits, self.bits = graph, ranges, p, wbits, p.bits
        self.shared_act = self.shared_w = None
        self.headroom = p.headroom if p.headroom >= 0 else (1 if p.bits >= 12 else 0)
        if not p.dynamic:
            act = max(ranges.values(), default=0.0)
            wmax = max(
                (
                    float(np.max(np.abs(n.inputs[1].const)))
                    for n in graph.nodes
                    if n.op in ("conv2d", "dense")
                    and n.inputs[1] is not None
                    and n.inputs[1].const is not None
                    and n.inputs[1].const.size
                ),
                default=0.0,
            )
            if p.frac_bits is not None:
                self.shared_act = p.frac_bits
            else:  # one Qm.n for everything: cover the largest activation and weight
                self.shared_act = min(choose_frac_bits(act, p.bits), choose_frac_bits(wmax, wbits))
            self.shared_w = (
                p.weight_frac_bits if p.weight_frac_bits is not None else self.shared_act
            )

    def act(self, v: Value) -> int:
        """Format of a requantized value: its range, or its ReLU's range when ReLU is its sole user."""
        if self.shared_act is not None:
            return self.shared_act
        key = id(v)
        users = v.users()
        if (
            len(users) == 1
            and users[0].op == "relu"
            and all(o is not v for o in self.graph.outputs)
        ):
            key = id(users[0].output)
        r = self.ranges.get(key, 0.0)
        if self.p.calib == "mse" and key in self.samples:
            return best_frac_bits(self.samples[key], self.bits, r) - self.headroom
        return choose_frac_bits(r, self.bits) - self.headroom

    def weight(self, w: np.ndarray) -> int:
        if self.shared_w is not None:
            return self.shared_w
        r = float(np.max(np.abs(w))) if w.size else 0.0
        if self.p.calib == "mse":
            return best_frac_bits(w, self.wbits, r)
        return choose_frac_bits(r, self.wbits)


#: float ops the fixed-point rewrite has an integer form for
_FX_SUPPORTED = (
    "conv2d", "dense", "relu", "clip (relu6)", "add", "max_pool", "avg_pool",
    "global_avg_pool", "flatten / reshape", "batch_norm (folded by cleanup)",
)  # fmt: skip


def _const(graph: Graph, arr: np.ndarray, name: str, bits: int, frac: int) -> Value:
    v = graph.const(arr, name, dtype=arr.dtype)
    v.type = TensorType(v.type.shape, v.type.dtype, FixedPoint(bits, frac))
    return v


def _mac(
    graph: Graph, n: Node, x: Value, fx: int, fmt: _Formats, bits: int, wbits: int
) -> tuple[Node, int, dict]:
    w, b = n.inputs[1], n.inputs[2] if len(n.inputs) > 2 else None
    if w is None or w.const is None or (b is not None and b.const is None):
        raise PassError(f"fixed-point: node {n.name!r} ({n.op}) needs constant weights and bias")
    fw = fmt.weight(w.const)
    fo = fmt.act(n.output)
    wq = quantize_weight(w.const, wbits, fw)
    facc = fx + fw
    ins = [x, _const(graph, wq, f"{w.name}_fx", wbits, fw)]
    bq = None
    if b is not None:
        bq = np.floor(b.const.astype(np.float64) * 2.0**facc + 0.5).astype(np.int64)
    shift = facc - fo
    # worst case |acc| (+ rounding half) over output channels -> accumulator width
    k_abs = np.abs(wq.astype(np.int64)).reshape(wq.shape[0], -1).sum(axis=1)
    bound = int(np.max(k_abs)) * (1 << (bits - 1)) + (
        int(np.max(np.abs(bq))) if bq is not None else 0
    )
    bound += 1 << max(shift - 1, 0)
    acc_bits = 32 if bound < (1 << 31) else 64
    if bound >= (1 << 62):
        raise PassError(
            f"fixed-point: node {n.name!r} accumulator bound 2^{math.log2(bound):.0f} overflows int64"
        )
    if bq is not None:
        bdt = np.int32 if np.max(np.abs(bq)) < (1 << 31) else np.int64
        ins.append(
            _const(graph, bq.astype(bdt), f"{b.name}_fx", 32 if bdt == np.int32 else 64, facc)
        )
    attrs = {"shift": shift, "bits": bits, "acc_bits": acc_bits}
    if n.op == "conv2d":
        attrs.update({k: n.attrs[k] for k in ("strides", "pads", "dilations", "groups")})
    node = graph.add_node(f"fx_{n.op}", ins, attrs, name=n.name, out_names=[f"{n.output.name}_q"])
    return node, fo, {"weight_frac": fw, "acc_frac": facc, "acc_bits": acc_bits, "shift": shift}


def _rewrite(graph: Graph, fmt: _Formats, bits: int, wbits: int) -> dict[str, Any]:
    """Append the integer graph, point the outputs at it, remove the float nodes."""
    q: dict[int, tuple[Value, int]] = {}  # float value id -> (integer value, frac bits)
    layers: dict[str, dict[str, Any]] = {}
    old_nodes = list(graph.nodes)
    for v in graph.inputs:
        if not np.issubdtype(np.dtype(v.dtype), np.floating):
            raise PassError(f"fixed-point: graph input %{v.name} is {v.type}, expected float")
        f = fmt.act(v)
        qn = graph.add_node(
            "fx_quantize",
            [v],
            {"bits": bits, "frac_bits": f},
            name=f"{v.name}_quantize",
            out_names=[f"{v.name}_q"],
        )
        q[id(v)] = (qn.output, f)
        layers[qn.name] = {"op": "fx_quantize", "out_frac": f}
    for n in old_nodes:
        ins = []
        for i, v in enumerate(n.inputs):
            if v is None or v.is_const:
                continue
            if id(v) not in q:
                raise PassError(
                    f"fixed-point: node {n.name!r} ({n.op}) input {i} %{v.name} has no fixed-point form"
                )
            ins.append(q[id(v)])
        if n.op in ("conv2d", "dense"):
            node, fo, rec = _mac(graph, n, ins[0][0], ins[0][1], fmt, bits, wbits)
        elif n.op in _FORMAT_KEEPING and len(ins) == 1:
            op = {"relu": "fx_relu", "max_pool": "fx_max_pool"}.get(n.op, n.op)
            attrs = dict(n.attrs)
            if op == "dropout":
                op, attrs = "identity", {}
            node = graph.add_node(
                op, [ins[0][0]], attrs, name=n.name, out_names=[f"{n.output.name}_q"]
            )
            fo, rec = ins[0][1], {}
        elif n.op == "clip" and len(ins) == 1:
            fi = ins[0][1]
            lo_q, hi_q = qrange(bits)
            lo = (
                max(lo_q, min(hi_q, int(np.floor(n.attrs["min"] * 2.0**fi + 0.5))))
                if np.isfinite(n.attrs["min"])
                else lo_q
            )
            hi = (
                max(lo_q, min(hi_q, int(np.floor(n.attrs["max"] * 2.0**fi + 0.5))))
                if np.isfinite(n.attrs["max"])
                else hi_q
            )
            node = graph.add_node(
                "fx_clip",
                [ins[0][0]],
                {"lo": lo, "hi": hi},
                name=n.name,
                out_names=[f"{n.output.name}_q"],
            )
            fo, rec = fi, {}
        elif n.op == "add" and len(ins) == 2 and n.inputs[0].shape == n.inputs[1].shape:
            (a, fa), (b, fb) = ins
            fc, fo = max(fa, fb), fmt.act(n.output)
            node = graph.add_node(
                "fx_add",
                [a, b],
                {"lshift_a": fc - fa, "lshift_b": fc - fb, "shift": fc - fo, "bits": bits},
                name=n.name,
                out_names=[f"{n.output.name}_q"],
            )
            rec = {"shift": fc - fo}
        elif (
            n.op in ("global_avg_pool", "avg_pool") and len(ins) == 1 and n.inputs[0].type.rank == 4
        ):
            (x, fi), fo = ins[0], fmt.act(n.output)
            if n.op == "global_avg_pool":
                pa = {"kernel": tuple(x.shape[2:]), "strides": (1, 1), "pads": (0, 0, 0, 0)}
            else:
                if n.attrs["ceil_mode"] or (
                    any(n.attrs["pads"]) and not n.attrs["count_include_pad"]
                ):
                    raise PassError(
                        f"fixed-point: node {n.name!r} (avg_pool): ceil_mode / pads without count_include_pad have no fixed divisor"
                    )
                pa = {k: n.attrs[k] for k in ("kernel", "strides", "pads")}
            mult, shift = avg_pool_multiplier(math.prod(pa["kernel"]), fi, fo)
            node = graph.add_node(
                "fx_avg_pool",
                [x],
                {**pa, "mult": mult, "shift": shift, "bits": bits},
                name=n.name,
                out_names=[f"{n.output.name}_q"],
            )
            rec = {"mult": mult, "shift": shift}
        else:
            hint = (
                " (run the 'cleanup' pass first to fold batch norm)" if n.op == "batch_norm" else ""
            )
            raise PassError(
                f"fixed-point: node {n.name!r} ({n.op}) has no integer-only form{hint}; fixed "
                f"point covers {', '.join(_FX_SUPPORTED)} (quantize-int8 handles more ops)"
            )
        q[id(n.output)] = (node.output, fo)
        layers[n.name] = {"op": node.op, "out_frac": fo, **rec}
    # outputs -> dequantize; drop the float nodes; give the new nodes and outputs the old names
    renames: list[tuple[Value, str]] = []
    for i, out in enumerate(list(graph.outputs)):
        if id(out) not in q:
            raise PassError(f"fixed-point: graph output %{out.name} has no fixed-point form")
        qv, f = q[id(out)]
        dq = graph.add_node("fx_dequantize", [qv], {"frac_bits": f}, name=f"{out.name}_dequantize")
        graph.outputs[i] = dq.output
        renames.append((dq.output, out.name))
    new_names: list[tuple[Node, str]] = []
    for n in reversed(old_nodes):
        new = q.get(id(n.output))
        graph.remove_node(n)
        if new is not None and new[0].producer is not None and new[0].producer.name != n.name:
            new_names.append((new[0].producer, n.name))
    for node, name in new_names:
        node.name = name
    for v, name in renames:
        v.name = name
    return {"layers": layers}


__all__ = ["FixedPointQuantize", "assert_integer_only", "choose_frac_bits", "quantize_weight"]
