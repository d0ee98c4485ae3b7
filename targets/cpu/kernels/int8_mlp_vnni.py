"""A chain of small int8 dense layers (batch 1) as one kernel on AVX-512 VNNI, hand-written TIR.

LeNet-5's classifier (400 -> 120 -> 84 -> 10, 200 -> 48 -> 32 -> 10 once pruned) and LeNet-300
(784 -> 300 -> 100 -> 10) are three ``qdense`` kernels of a microsecond of work or less each; per layer the VM call, its argument checks and
the intermediate tensor cost about as much as the layer. Here the layers run back to back in one
call, the requantized 8-bit activations between them in a stack buffer::

    h_0 = x                                                     (u8, K_0 values)
    acc[j] = bias_eff_l[j] + sum_{kb} vpdpbusd(h_l[4kb : 4kb+4], kernel_l[j // 16, kb, j % 16])
    h_{l+1}[j] = QEpilogue_l(acc[j], mult_l[j])                 (j < N_l rounded up to 16)
    out = h_L                                                   (u8, s8 or float32)

Per layer the output blocks of 16 accumulate side by side (independent ``vpdpbusd`` chains,
each 4-byte input group broadcast once), at most ``ACCUMULATORS`` at a time. The weights are
:func:`.int8_dense.pack_int8_dense_weight` (``lanes=16``) and the bias
:func:`.int8_conv.conv_bias_eff` with each layer's input zero point, as for the one-layer
kernel, so the numbers are the same. The padding outputs of a layer (``N_l`` up to a multiple of
16) are the next layer's zero-weight columns: their values never count.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mcopt.targets.cpu.kernels.int8_conv import quantize_u8_te
from mcopt.targets.cpu.kernels.int8_epilogue import QEpilogue

#: output lanes of one ``vpdpbusd``
LANES = 16
#: most output blocks accumulating at once (8 independent ``vpdpbusd`` chains; 16 was slower on
#: 512-wide layers: 6.5 vs 4.9 us for a 512-512-512-10 MLP, as fast on LeNet-300)
ACCUMULATORS = 8
#: most multiply-accumulates of one layer in the chain: the chain runs on one core, and bigger
#: layers are faster on their own kernel on the thread pool (1024 x 1024: 6.4 us there, 11.9 in
#: the chain); below this one call wins (LeNet-300's 784 x 300 layer in the chain: 5.4 -> 3.5 us)
MAX_MACS = 1 << 18


@dataclass(frozen=True)
class MLPLayer:
    """One layer: ``k`` inputs (u8), ``n`` outputs, its tail (an int base requantizes, a float
    one clamps: :class:`QEpilogue` without residual)."""

    k: int
    n: int
    epilogue: QEpilogue

    @property
    def n_pad(self) -> int:
        return -(-self.n // LANES) * LANES

    @property
    def k_groups(self) -> int:
        return -(-self.k // 4)


def int8_mlp_vnni(
    x_shape: Sequence[int],
    layers: Sequence[MLPLayer],
    in_quant: tuple[float, int] | None = None,
) -> Any:
    """The PrimFunc ``(x (x_shape) u8, kernel_0, bias_0, mult_0, ..., out (1, N_L))``: ``x`` holds
    the first layer's ``K_0`` inputs in memory order (any shape of that many elements), each
    ``kernel_l`` is ``(N_l/16, K_l/4, 16, 4)`` int8, ``bias_l`` ``(Np_l,)`` int32, ``mult_l``
    ``(Np_l,)`` float32; ``out`` has the last layer's dtype. ``in_quant = (scale, zp)``: ``x`` is
    float32 and quantized to u8 on the way in, as the ``quantize`` op does (``round(x / scale) +
    zp``, clamped), so the graph's quantize of the input runs inside."""
    from tvm import tirx
    from tvm.script.ir_builder import IRBuilder
    from tvm.script.ir_builder import tirx as T

    from mcopt.targets.cpu.kernels.int8_intrin import vpdpbusd

    if len(layers) < 1:
        raise ValueError("an MLP kernel needs at least one layer")
    for a, b in zip(layers, layers[1:]):
        if b.k != a.n or a.epilogue.out_dtype != "uint8":
            raise ValueError(f"layer of {b.k} inputs after one of {a.n} {a.epilogue.out_dtype}")
    k0 = layers[0].k
    size = 1
    for d in x_shape:
        size *= int(d)
    if size != k0:
        raise ValueError(f"input of shape {tuple(x_shape)} for {k0} inputs")
    lead = [0] * (len(x_shape) - 1)
    last = layers[-1]

    with IRBuilder() as ib:
        with T.prim_func():
            T.func_name("main")
            x_dtype = "float32" if in_quant is not None else "uint8"
            x = T.arg("x", T.buffer(tuple(int(d) for d in x_shape), x_dtype))
            consts = []
            for i, lay in enumerate(layers):
                kern = T.arg(
                    f"kernel_{i}", T.buffer((lay.n_pad // LANES, lay.k_groups, LANES, 4), "int8")
                )
                bias = T.arg(f"bias_{i}", T.buffer((lay.n_pad,), "int32"))
                mult = T.arg(f"mult_{i}", T.buffer((lay.n_pad,), "float32"))
                consts.append((kern, bias, mult))
            out = T.arg("out", T.buffer((1, last.n), last.epilogue.out_dtype))
            T.func_attr({"tirx.noalias": True})
            acc = T.alloc_local((ACCUMULATORS * LANES,), "int32")
            tmp = T.alloc_local((LANES,), last.epilogue.out_dtype)
            # the first layer's input: quantized into a copy, or copied where its last group of
            # 4 would read past it
            src: Any = x
            if k0 % 4 or in_quant is not None:
                src = T.alloc_buffer((layers[0].k_groups * 4,), "uint8")
                with T.vectorized(0, k0) as i:
                    v = x[(*lead, i)]
                    if in_quant is not None:
                        v = quantize_u8_te(v, *in_quant)
                    T.buffer_store(src, v, [i])
                for i in range(k0, layers[0].k_groups * 4):
                    T.buffer_store(src, tirx.const(0, "uint8"), [i])
            src_lead = lead if src is x else []
            hidden = [T.alloc_buffer((lay.n_pad,), "uint8") for lay in layers[:-1]]
            for li, lay in enumerate(layers):
                kern, bias, mult = consts[li]
                blocks = lay.n_pad // LANES
                for b0 in range(0, blocks, ACCUMULATORS):
                    nbs = range(b0, min(blocks, b0 + ACCUMULATORS))
                    for j, nb in enumerate(nbs):
                        T.buffer_store(
                            acc, bias.vload([nb * LANES], "int32x16"),
                            [tirx.Ramp(j * LANES, 1, LANES)],
                        )  # fmt: skip
                    with T.serial(0, lay.k_groups) as kb:
                        word = T.reinterpret("int32", src.vload([*src_lead, kb * 4], "uint8x4"))
                        a_op = T.bind(tirx.Broadcast(word, LANES))
                        for j, nb in enumerate(nbs):
                            w_op = kern.vload([nb, kb, 0, 0], "int8x64")
                            cur = acc.vload([j * LANES], "int32x16")
                            new = vpdpbusd(cur, a_op, w_op, LANES)
                            T.buffer_store(acc, new, [tirx.Ramp(j * LANES, 1, LANES)])
                    for j, nb in enumerate(nbs):
                        y = lay.epilogue.apply_te(
                            acc.vload([j * LANES], "int32x16"),
                            mult.vload([nb * LANES], "float32x16"),
                        )
                        if li < len(layers) - 1:
                            T.buffer_store(hidden[li], y, [tirx.Ramp(nb * LANES, 1, LANES)])
                        elif (nb + 1) * LANES <= lay.n:
                            T.buffer_store(out, y, [0, tirx.Ramp(nb * LANES, 1, LANES)])
                        else:  # the last block of the output: its real lanes only
                            T.buffer_store(tmp, y, [tirx.Ramp(0, 1, LANES)])
                            for t in range(lay.n - nb * LANES):
                                T.buffer_store(out, tmp[t], [0, nb * LANES + t])
                if li < len(layers) - 1:
                    src, src_lead = hidden[li], []
    return ib.get().with_attr("tirx.is_scheduled", True)


def mlp_applies(target: Any, layers: Sequence[MLPLayer]) -> bool:
    """Whether a chain runs as one kernel: two layers or more, each of at most ``MAX_MACS``,
    8-bit unsigned activations between them, an AVX-512 VNNI target."""
    import tvm

    from mcopt.targets.cpu.kernels.int8_intrin import _has

    if len(layers) < 2 or any(lay.k * lay.n > MAX_MACS for lay in layers):
        return False
    if any(lay.epilogue.out_dtype != "uint8" for lay in layers[:-1]):
        return False
    if any(lay.epilogue.residual is not None for lay in layers):
        return False
    if not isinstance(target, tvm.target.Target):
        target = tvm.target.Target(target)
    return all(_has(target, f) for f in ("avx512f", "avx512bw", "avx512vnni"))


__all__ = ["MAX_MACS", "MLPLayer", "int8_mlp_vnni", "mlp_applies"]
