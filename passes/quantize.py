"""8-bit (and 4-bit) uniform post-training quantization: ``quantize-int8``.

Method (Jacob et al., CVPR 2018; Krishnamoorthi, "Quantizing deep convolutional networks for
efficient inference: A whitepaper", 2018; the lecture's "8-bit uniform quantization: 256 levels
between min and max"):

- **weights**: per-output-channel symmetric, ``scale[o] = max|W[o]| / qmax``, codes
  ``q = clip(rint(W / scale), -qmax-1, qmax)`` stored as real int8 bytes (``UniformQuant``
  encoding; ``weight_bits=4`` keeps codes in [-8, 7] and counts 4 bits each). ``reduce_range``
  uses 7-bit codes [-64, 63] at 8 bits, as onnxruntime's ``reduce_range``: AVX2's ``vpmaddubsw``
  (no VNNI) is then exact. The default ``"auto"`` asks the compile target
  (``TargetServices.int8_reduce_range``): on at AVX2-only x86, off where the dot product
  accumulates exactly in int32 (VNNI, ARM ``sdot``, CUDA, plain code) — there 7-bit codes only
  double the weight rounding error; on (as onnxruntime) when no target is given.
  ``rounding="gptq"`` replaces round-to-nearest by second-order rounding (:mod:`.gptq`).
- **activations**: per-tensor, ``activations="asymmetric"`` (uint8, ``scale = (hi - lo) / 255``,
  ``zero_point = rint(-lo / scale)``, ``lo <= 0 <= hi``) or ``"symmetric"`` (int8, zero point 0);
  the range ``[lo, hi]`` from the calibration feeds by ``calibration="minmax"`` (observed range),
  ``"percentile"`` (the ``percentile``-th / ``100 - percentile``-th percentiles) or ``"mse"``
  (the clipping of the observed range, on a grid of 40 factors in [0.3, 1], that minimizes the
  quantization mean squared error on the calibration sample; Banner et al. / TensorRT-style).
- **bias correction** (Nagel et al., "Data-Free Quantization", ICCV 2019, empirical form): the mean
  output shift caused by weight rounding, ``E[(W_q - W) x] = (W_q - W) E[x]`` per output channel
  from the per-input-channel calibration means, is subtracted from the bias.
- **graph**: every ``conv2d`` / ``dense`` with constant weights becomes ``quantize`` (one per
  activation tensor, shared) + ``qconv2d`` / ``qdense`` with int32 bias at scale
  ``x_scale * w_scale`` (``w_scale`` kept only on the int8 weight's ``UniformQuant`` type); a
  following ``relu`` / ``clip`` is fused as the output clamp; when a layer's output feeds only
  ``quantize`` nodes of one set of parameters, the layer requantizes directly to that uint8/int8
  tensor (integer epilogue, QLinearConv), otherwise it dequantizes to float32.
- **mixed precision**: ``keep_float`` (node names) stay float; ``float_layers=N`` keeps the N
  layers whose quantization alone (weights + input) changes the first graph output most
  (relative L2 error on the calibration feeds) in float.
- a layer fed by ``dequantize(q)`` (an imported QDQ model) reuses ``q`` and its parameters.
- **recurrent layers** (``recurrent``, default on): an ``lstm`` with constant weights becomes
  ``qlstm``: W and R as int8 codes, one symmetric scale per direction and gate row
  (``max|row| / 127``), gates and states float (weight-only: its per-step matrix-vector
  product reads 4x fewer bytes; onnxruntime's static QDQ quantizer leaves LSTMs float).
- **quantized residuals** (``quantized_residuals``, default on): a residual ``add(y, h)`` whose
  skip input ``h`` is also quantized for the next layers reads ``dequantize(quantize(h))``, as
  onnxruntime's QDQ ``Add`` does; the CPU planner then runs each ResNet / MobileNet-V2 block as
  int8 kernels only (conv + add + relu + quantize in one ``fused_qconv2d``). Costs at most half a
  quantization step of ``h`` per skip; ``quantized_residuals=false`` keeps the float skip.

Lossy. Calibration uses ``ctx.calib`` (up to ``num_calib`` feeds); without it, random normal
inputs (with a note) — fine for random-weight models, not for trained ones.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from mcopt.analysis.sensitivity import calib_or_random
from mcopt.errors import OptionError
from mcopt.interpreter import run, run_values
from mcopt.ir.core import Graph, Node, Value
from mcopt.ir.types import TensorType, UniformQuant
from mcopt.ops.quant import quantize_array
from mcopt.pass_manager import Pass, PassContext, register_pass
from mcopt.passes.gptq import HessianAccumulator, gptq_quantize, im2col

LAYER_OPS = ("conv2d", "dense")
_SAMPLE = 1 << 16  # values kept per tensor per feed for percentile / MSE calibration


@dataclass
class _Stats:
    """Running range, sample and per-channel mean of one activation tensor."""

    lo: float = math.inf
    hi: float = -math.inf
    samples: list[np.ndarray] = field(default_factory=list)
    chan_sum: np.ndarray | None = None
    count: int = 0
    #: the channels are the last axis (a dense layer's features: a transformer's (N, T, C) tokens),
    #: else axis 1 (NCHW)
    feature_last: bool = False

    def add(self, a: np.ndarray, rng: np.random.Generator, keep_sample: bool) -> None:
        a = np.asarray(a, np.float32)
        self.lo = min(self.lo, float(a.min()))
        self.hi = max(self.hi, float(a.max()))
        flat = a.reshape(-1)
        if keep_sample:
            self.samples.append(
                flat if flat.size <= _SAMPLE else rng.choice(flat, _SAMPLE, replace=False)
            )
        axis = 1 if a.ndim > 2 and not self.feature_last else a.ndim - 1
        axes = tuple(i for i in range(a.ndim) if i != axis)
        s = a.astype(np.float64).sum(axis=axes)
        self.chan_sum = s if self.chan_sum is None else self.chan_sum + s
        self.count += int(a.size // a.shape[axis])

    @property
    def channel_mean(self) -> np.ndarray:
        assert self.chan_sum is not None
        return self.chan_sum / max(self.count, 1)


def activation_params(
    st: _Stats, symmetric: bool, method: str, percentile: float
) -> tuple[float, int, str]:
    """``(scale, zero_point, dtype)`` of an activation tensor from its calibration statistics."""
    lo, hi = min(st.lo, 0.0), max(st.hi, 0.0)
    sample = np.concatenate(st.samples) if st.samples else None
    if method == "percentile" and sample is not None:
        if symmetric:
            hi = float(np.percentile(np.abs(sample), percentile))
        else:
            lo = min(float(np.percentile(sample, 100.0 - percentile)), 0.0)
            hi = max(float(np.percentile(sample, percentile)), 0.0)
    elif method == "mse" and sample is not None:
        lo, hi = _mse_range(sample, lo, hi, symmetric)
    return _params_from_range(lo, hi, symmetric)


def _params_from_range(lo: float, hi: float, symmetric: bool) -> tuple[float, int, str]:
    if symmetric:
        m = max(abs(lo), abs(hi), 1e-8)
        return m / 127.0, 0, "int8"
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = max(hi - lo, 1e-8) / 255.0
    zp = int(np.clip(np.rint(-lo / scale), 0, 255))
    return scale, zp, "uint8"


def _mse_range(x: np.ndarray, lo: float, hi: float, symmetric: bool) -> tuple[float, float]:
    best, best_err = (lo, hi), math.inf
    for f in np.linspace(0.3, 1.0, 40):
        s, z, dt = _params_from_range(lo * f, hi * f, symmetric)
        q = quantize_array(x, (s,), (z,), dt)
        err = float(np.mean((x - (q.astype(np.float32) - z) * s) ** 2))
        if err < best_err:
            best, best_err = (lo * f, hi * f), err
    return best


def weight_scales(w: np.ndarray, qmax: int) -> np.ndarray:
    """Per-output-channel symmetric scales ``max|W[o]| / qmax`` (float32, never 0)."""
    m = np.abs(w.reshape(w.shape[0], -1)).max(axis=1).astype(np.float64)
    return np.maximum(m / qmax, 1e-12).astype(np.float32)


def _bias_headroom(
    w: np.ndarray, q: np.ndarray, s: np.ndarray, bias: np.ndarray, sx: float, qmax: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel weight scales no smaller than keeps the int32 bias ``bias / (sx * s)`` within
    half of what the accumulator has left after the largest dot product (``K * 255 * (qmax+1)``);
    the channels whose scale grows (near-zero weights under a real bias: dead units of an L2-
    regularized MLP) are quantized again at that scale. Without it such a bias was clipped to
    int32 and the accumulator overflowed."""
    k = int(np.prod(w.shape[1:]))
    room = (2**31 - 1) - k * 255 * (qmax + 1)
    if room <= 0:
        return q, s
    need = np.abs(bias) / (float(sx) * room * 0.5)
    low = s.astype(np.float64) < need
    if not low.any():
        return q, s
    s = s.copy()
    s[low] = need[low].astype(s.dtype)
    w2 = w.reshape(w.shape[0], -1).astype(np.float64)
    q2 = q.reshape(q.shape[0], -1).copy()
    q2[low] = np.clip(np.rint(w2[low] / s[low, None].astype(np.float64)), -qmax - 1, qmax)
    return q2.reshape(q.shape).astype(np.int8), s


@register_pass
class QuantizeInt8(Pass):
    """Post-training uniform quantization of conv2d/dense layers (see the module docstring)."""

    name = "quantize-int8"
    lossless = False

    weight_bits: int = 8
    reduce_range: bool | Literal["auto"] = "auto"
    activations: str = "asymmetric"
    calibration: str = "minmax"
    percentile: float = 99.99
    num_calib: int = 16
    bias_correction: bool = True
    rounding: str = "nearest"
    keep_float: tuple[str, ...] = ()
    float_layers: int = 0
    fuse_output: bool = True
    quantized_residuals: bool = True
    recurrent: bool = True

    def _check(self) -> None:
        def bad(opt: str, val: Any, valid: Any) -> OptionError:
            return OptionError(f"quantize-int8: option {opt}={val!r} is invalid; valid: {valid}")

        if self.weight_bits not in (2, 3, 4, 5, 6, 7, 8):
            raise bad("weight_bits", self.weight_bits, "2..8")
        if self.activations not in ("asymmetric", "symmetric"):
            raise bad("activations", self.activations, "asymmetric, symmetric")
        if self.calibration not in ("minmax", "percentile", "mse"):
            raise bad("calibration", self.calibration, "minmax, percentile, mse")
        if self.rounding not in ("nearest", "gptq"):
            raise bad("rounding", self.rounding, "nearest, gptq")
        if not 50.0 < self.percentile <= 100.0:
            raise bad("percentile", self.percentile, "(50, 100]")

    @property
    def qmax(self) -> int:
        bits = 7 if (self.reduce_range and self.weight_bits == 8) else self.weight_bits
        return 2 ** (bits - 1) - 1

    # --- driver ---------------------------------------------------------------------------------
    def run(self, graph: Graph, ctx: PassContext) -> bool:
        self._check()
        if self.reduce_range == "auto":
            want = ctx.target.int8_reduce_range() if ctx.target is not None else True
            ctx.detail("reduce_range", f"{want} (auto: target {getattr(ctx.target, 'name', None)})")
            return dataclasses.replace(self, reduce_range=want).run(graph, ctx)
        if self.rounding == "gptq" and ctx.heldout and ctx.teacher is not None:
            # GPTQ fits its rounding to the calibration inputs: keep it only where it beats
            # round-to-nearest on inputs it did not see (both errors go to the report)
            rtn = graph.copy()
            dataclasses.replace(self, rounding="nearest")._quantize(rtn, ctx)
            changed = self._quantize(graph, ctx)
            e_rtn, e_gptq = ctx.heldout_error(rtn), ctx.heldout_error(graph)
            ctx.detail("heldout_rel_error", {"nearest": e_rtn, "gptq": e_gptq})
            if e_rtn is not None and e_gptq is not None and e_gptq > e_rtn:
                graph.replace_contents(rtn)
                ctx.detail("kept", "round-to-nearest (GPTQ raised the held-out error)")
            return changed
        return self._quantize(graph, ctx)

    def _quantize(self, graph: Graph, ctx: PassContext) -> bool:
        layers = [
            n
            for n in graph.nodes
            if n.op in LAYER_OPS
            and n.inputs[1] is not None
            and n.inputs[1].const is not None
            and np.dtype(n.inputs[1].dtype).kind == "f"
            and n.inputs[0] is not None
            and n.inputs[0].const is None
        ]
        unknown = sorted(set(self.keep_float) - {n.name for n in graph.nodes})
        if unknown:
            raise OptionError(
                f"quantize-int8: keep_float names unknown node(s) {unknown}; "
                f"quantizable layers: {[n.name for n in layers][:20]}"
            )
        layers = [n for n in layers if n.name not in self.keep_float]
        lstms = [] if not self.recurrent else [
            n for n in graph.nodes
            if n.op == "lstm" and n.name not in self.keep_float
            and all(v is not None and v.const is not None for v in n.inputs[1:3])
        ]  # fmt: skip
        for n in lstms:
            self._quantize_lstm(graph, n, ctx)
        if not layers:
            if lstms:
                graph.toposort()
            return bool(lstms)
        feeds = calib_or_random(graph, ctx.feeds(self.num_calib), ctx.rng(5), n=4, log=ctx.info)
        stats, hess = self._calibrate(graph, layers, feeds, ctx)
        if self.float_layers > 0:
            from mcopt.pass_manager import Int8FloatLayers

            kept = self._most_sensitive(graph, layers, stats, feeds[:2], self.float_layers)
            ctx.info(f"quantize-int8: keeping {len(kept)} most sensitive layer(s) float: {kept}")
            ctx.analyses.put(Int8FloatLayers(kept))
            layers = [n for n in layers if n.name not in kept]
        # rewriting a layer replaces its output value: key the statistics by layer name
        lstats = {n.name: stats[id(n.inputs[0])] for n in layers}
        qcache: dict[int, Value] = {}
        for node in layers:
            self._quantize_layer(graph, node, lstats[node.name], hess.get(node.name), qcache)
        if self.quantized_residuals:
            n = _quantize_residuals(graph)
            if n:
                ctx.detail("quantized_residuals", n)
        if self.fuse_output:
            _fuse_requantize(graph)
        graph.toposort()
        return True

    def _quantize_lstm(self, graph: Graph, node: Node, ctx: PassContext) -> None:
        """``lstm`` -> ``qlstm``: W and R as int8 codes with one symmetric scale per direction and
        gate row (``max|row| / 127``; the gates and states stay float: weight-only, as the
        recurrence's matrix-vector products are bound by the weight's bytes)."""
        ins = list(node.inputs) + [None] * (6 - len(node.inputs))
        codes, scales = [], []
        for v in ins[1:3]:
            assert v is not None and v.const is not None
            w = np.asarray(v.const, np.float32)
            s = weight_scales(w.reshape(-1, w.shape[-1]), 127).reshape(w.shape[:-1])
            q = np.clip(np.rint(w / s[..., None]), -127, 127).astype(np.int8)
            codes.append(graph.const(q, name=f"{v.name}_int8"))
            scales.append(graph.const(s, name=f"{v.name}_scale"))
        new = Node("qlstm", [ins[0], *codes, *scales, *ins[3:6]], [], dict(node.attrs), node.name)
        graph.replace_nodes([node], new)
        ctx.info(f"quantize-int8: {node.name} (lstm) -> qlstm (int8 weights, float gates)")

    # --- calibration ----------------------------------------------------------------------------
    def _calibrate(
        self, graph: Graph, layers: list[Node], feeds: list[Any], ctx: PassContext
    ) -> tuple[dict[int, _Stats], dict[str, HessianAccumulator]]:
        values = _unique([n.inputs[0] for n in layers])  # type: ignore[misc]
        stats = {id(v): _Stats() for v in values}
        for n in layers:  # a dense layer's input: its features are the last axis
            if n.op == "dense":
                stats[id(n.inputs[0])].feature_last = True
        hess: dict[str, HessianAccumulator] = {}
        rng = ctx.rng(11)
        keep_sample = self.calibration != "minmax"
        for feed in feeds:
            _, kept = run_values(graph, feed, keep=values)
            for v in values:
                stats[id(v)].add(kept[v.name], rng, keep_sample)
            if self.rounding == "gptq":
                for n in layers:
                    if n.op == "conv2d" and int(n.attrs["groups"]) != 1:
                        continue
                    x = np.asarray(kept[n.inputs[0].name], np.float32)  # type: ignore[union-attr]
                    w = n.inputs[1].const  # type: ignore[union-attr]
                    cols = (
                        im2col(x, w.shape[2:], n.attrs)
                        if n.op == "conv2d"
                        else x.reshape(-1, x.shape[-1]).T
                    )
                    hess.setdefault(n.name, HessianAccumulator(cols.shape[0])).add(cols)
        return stats, hess

    def _act(self, st: _Stats) -> tuple[float, int, str]:
        return activation_params(
            st, self.activations == "symmetric", self.calibration, self.percentile
        )

    # --- weights --------------------------------------------------------------------------------
    def quantize_weight(
        self, w: np.ndarray, hess: HessianAccumulator | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(codes int8, per-channel scales)`` by round-to-nearest or GPTQ."""
        qmax = self.qmax
        s = weight_scales(w, qmax)
        w2 = w.reshape(w.shape[0], -1).astype(np.float64)
        if self.rounding == "gptq" and hess is not None and hess.n > 0:
            q = gptq_quantize(w2, hess.h, s, -qmax - 1, qmax)
        else:
            q = np.clip(np.rint(w2 / s[:, None].astype(np.float64)), -qmax - 1, qmax)
        return q.reshape(w.shape).astype(np.int8), s

    # --- sensitivity ----------------------------------------------------------------------------
    def _most_sensitive(
        self,
        graph: Graph,
        layers: list[Node],
        stats: dict[int, _Stats],
        feeds: Sequence[Any],
        count: int,
    ) -> list[str]:
        ref = [run(graph, f)[0] for f in feeds]
        scores: dict[str, float] = {}
        for node in layers:
            g = graph.copy()
            n2 = g.find_node(node.name)
            w = n2.inputs[1]
            assert w is not None and w.const is not None
            q, s = self.quantize_weight(w.const, None)
            wd = (q.reshape(q.shape[0], -1) * s[:, None]).reshape(w.shape).astype(w.dtype)
            n2.set_input(1, g.const(wd, f"{w.name}_fq"))
            sc, zp, dt = self._act(stats[id(node.inputs[0])])
            qn = g.add_node(
                "quantize", [n2.inputs[0]], {"scale": (sc,), "zero_point": (zp,), "dtype": dt},
                before=n2,
            )  # fmt: skip
            dq = g.add_node("dequantize", [qn.output], {"scale": (sc,), "zero_point": (zp,)},
                            before=n2)  # fmt: skip
            n2.set_input(0, dq.output)
            err = 0.0
            for f, r in zip(feeds, ref):
                y = run(g, f)[0]
                err += float(np.linalg.norm(y - r) / max(np.linalg.norm(r), 1e-12))
            scores[node.name] = err / max(len(feeds), 1)
        return sorted(scores, key=lambda k: -scores[k])[:count]

    # --- rewrite --------------------------------------------------------------------------------
    def _quantize_layer(
        self,
        graph: Graph,
        node: Node,
        st: _Stats,
        hess: HessianAccumulator | None,
        qcache: dict[int, Value],
    ) -> None:
        x, w, b = (list(node.inputs) + [None])[:3]
        assert x is not None and w is not None and w.const is not None
        xq, (sx, zx) = self._input_codes(graph, x, st, qcache)
        q, s = self.quantize_weight(w.const, hess)
        bias = np.zeros(w.shape[0], np.float64) if b is None or b.const is None else b.const
        bias = np.asarray(bias, np.float64)
        q, s = _bias_headroom(w.const, q, s, bias, sx, self.qmax)
        wdq = (q.reshape(q.shape[0], -1).astype(np.float32) * s[:, None]).reshape(w.shape)
        if self.bias_correction:
            mean_x = st.channel_mean
            dw = (wdq - w.const).astype(np.float64)
            if node.op == "conv2d" and mean_x.shape[0] != w.shape[1] * int(node.attrs["groups"]):
                shift = np.zeros(w.shape[0])  # the tensor also feeds a dense: no correction
            elif node.op == "conv2d":
                g = int(node.attrs["groups"])
                og, cg = w.shape[0] // g, w.shape[1]
                m = mean_x.reshape(g, 1, cg)
                shift = (dw.sum(axis=(2, 3)).reshape(g, og, cg) * m).sum(-1).reshape(-1)
            elif mean_x.shape[0] == dw.shape[1]:
                shift = dw @ mean_x
            else:  # the tensor also feeds a conv (channels on axis 1): no correction
                shift = np.zeros(dw.shape[0])
            bias = bias - shift
        bscale = sx * s.astype(np.float64)
        bq = np.clip(np.rint(bias / bscale), -(2**31) + 1, 2**31 - 1).astype(np.int32)
        enc = UniformQuant(
            bits=self.weight_bits,
            signed=True,
            scale=tuple(float(v) for v in s),
            zero_point=(0,) * len(s),
            axis=0,
        )
        wq = graph.const(q, f"{w.name}_q")
        wq.type = TensorType(q.shape, "int8", enc)
        inputs = [xq, wq]
        if b is not None or self.bias_correction:
            inputs.append(graph.const(bq, f"{node.name}_bias_q"))
        attrs = {
            "x_scale": float(sx),
            "x_zero_point": int(zx),
        }  # the weight scales: on wq's type (UniformQuant) only
        if node.op == "conv2d":
            attrs.update({k: node.attrs[k] for k in ("strides", "pads", "dilations", "groups")})
        out = node.output
        act = _fusable_activation(graph, out)
        if act is not None:
            attrs["act_min"], attrs["act_max"] = _act_bounds(act)
        qn = graph.add_node("q" + node.op, inputs, attrs, name=f"{node.name}_q", after=act or node)
        target = act.output if act is not None else out
        graph.replace_all_uses_with(target, qn.output)
        if act is not None:
            graph.remove_node(act)
        graph.remove_node(node)

    def _input_codes(
        self,
        graph: Graph,
        x: Value,
        st: _Stats,
        qcache: dict[int, Value],
    ) -> tuple[Value, tuple[float, int]]:
        p = x.producer
        if p is not None and p.op == "dequantize" and len(p.attrs["scale"]) == 1:
            src = p.inputs[0]
            assert src is not None
            return src, (float(p.attrs["scale"][0]), int(p.attrs["zero_point"][0]))
        cached = qcache.get(id(x))
        if cached is None:
            sc, zp, dt = self._act(st)
            after = x.producer
            kw = {"after": after} if after is not None else {"before": graph.nodes[0]}
            qn = graph.add_node(
                "quantize", [x], {"scale": (sc,), "zero_point": (zp,), "dtype": dt},
                name=f"{x.name}_quant", **kw,
            )  # fmt: skip
            cached = qcache[id(x)] = qn.output
        qp = cached.producer
        assert qp is not None
        return cached, (float(qp.attrs["scale"][0]), int(qp.attrs["zero_point"][0]))


def _unique(values: Sequence[Value]) -> list[Value]:
    seen: dict[int, Value] = {}
    for v in values:
        seen.setdefault(id(v), v)
    return list(seen.values())


def _fusable_activation(graph: Graph, out: Value) -> Node | None:
    """The relu / clip that is the only user of ``out`` (and ``out`` not a graph output)."""
    users = out.users()
    if len(users) != 1 or any(o is out for o in graph.outputs):
        return None
    u = users[0]
    return u if u.op in ("relu", "clip") and u.inputs[0] is out else None


def _act_bounds(act: Node) -> tuple[float, float]:
    if act.op == "relu":
        return 0.0, math.inf
    return float(act.attrs["min"]), float(act.attrs["max"])


def _quantize_residuals(graph: Graph) -> int:
    """A residual ``add(y, h)`` whose skip input ``h`` is also quantized for other layers reads
    ``dequantize(quantize(h))`` instead of ``h`` (onnxruntime's QDQ ``Add`` does the same): the
    skip connection then travels as the 8-bit tensor the next layers read anyway, and the layer
    that produces ``y`` can fuse the add, its activation and the next quantize into one int8
    kernel (a planned ``fused_qconv2d``). Lossy by at most half a quantization step of ``h``.
    Returns the number of adds rewritten."""
    deq: dict[int, Value] = {}
    count = 0
    for node in graph.iter_nodes():
        if node.op != "add" or len(node.inputs) != 2:
            continue
        a, b = node.inputs
        if a is None or b is None or a.const is not None or b.const is not None:
            continue
        if a.shape != b.shape or a.dtype != "float32" or b.dtype != "float32":
            continue
        for idx, h in enumerate((a, b)):
            other = (a, b)[1 - idx]
            if other.producer is None or other.producer.op not in ("qconv2d", "qdense"):
                continue
            q = next(
                (
                    u
                    for u in h.users()
                    if u.op == "quantize" and len(u.attrs["scale"]) == 1 and u is not node
                ),
                None,
            )
            if q is None:
                continue
            d = deq.get(id(q.output))
            if d is None:
                at = q.attrs
                dn = graph.add_node(
                    "dequantize",
                    [q.output],
                    {"scale": at["scale"], "zero_point": at["zero_point"], "axis": at["axis"]},
                    name=f"{q.name}_dq",
                    after=q,
                )
                d = deq[id(q.output)] = dn.output
            node.set_input(idx, d)
            count += 1
            break
    return count


def _fuse_requantize(graph: Graph) -> None:
    """``q = quantize(qconv2d(...)->float)`` with the float value used only by quantize nodes of
    identical parameters: the layer requantizes straight to ``q``'s dtype (integer epilogue)."""
    for node in graph.iter_nodes():
        if node.op not in ("qconv2d", "qdense") or node.attrs["out_dtype"] != "float32":
            continue
        out = node.output
        users = out.users()
        if not users or any(u.op != "quantize" for u in users):
            continue
        if any(o is out for o in graph.outputs):
            continue
        params = {(u.attrs["scale"], u.attrs["zero_point"], u.attrs["dtype"]) for u in users}
        if len(params) != 1:
            continue
        (scale, zp, dtype) = params.pop()
        if len(scale) != 1:
            continue
        attrs = dict(node.attrs)
        attrs.update(
            {"out_dtype": dtype, "out_scale": float(scale[0]), "out_zero_point": int(zp[0])}
        )
        new = graph.add_node(node.op, list(node.inputs), attrs, name=node.name, after=node)
        for u in users:
            graph.replace_all_uses_with(u.output, new.output)
            graph.remove_node(u)
        graph.remove_node(node)


__all__ = ["QuantizeInt8", "activation_params", "weight_scales"]
