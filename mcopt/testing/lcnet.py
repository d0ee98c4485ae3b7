"""A PP-LCNet-style mobile CNN (Cui et al., "PP-LCNet: A Lightweight CPU Convolutional Neural
Network", 2021) with seeded random weights, as an ONNX model: the blocks many users ship on CPUs.

Stem: 3x3 stride-2 conv + BN + hard-swish. Then depthwise-separable blocks (depthwise 3x3 / 5x5 +
BN + hard-swish, optional squeeze-and-excitation: GAP -> 1x1 conv -> ReLU -> 1x1 conv ->
HardSigmoid(1/6, 0.5) -> Mul, then pointwise 1x1 conv + BN + hard-swish), the paper's
``NET_CONFIG`` scaled by ``scale``. Head: GAP -> 1x1 conv to 1280 + hard-swish -> Flatten -> Gemm.
Weights are random (no training), then re-drawn by role with BN statistics fitted to a forward
pass (:func:`mcopt.testing.zoo.randomize_weights`), so every BN normalizes: with BN statistics
drawn blindly the signal died through the depth and the logits were the same for every input
(relative spread 1.5e-6 over 20 inputs, one argmax), which made its int8 agreement meaningless.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

#: (kernel, in, out, stride, SE) per block at scale 1 (the paper's NET_CONFIG, blocks2..blocks6)
NET_CONFIG: list[tuple[int, int, int, int, bool]] = [
    (3, 16, 32, 1, False),
    (3, 32, 64, 2, False),
    (3, 64, 64, 1, False),
    (3, 64, 128, 2, False),
    (3, 128, 128, 1, False),
    (3, 128, 256, 2, False),
    (5, 256, 256, 1, False),
    (5, 256, 256, 1, False),
    (5, 256, 256, 1, False),
    (5, 256, 256, 1, False),
    (5, 256, 256, 1, False),
    (5, 256, 512, 2, True),
    (5, 512, 512, 1, True),
]


def _div8(v: float) -> int:
    return max(8, int(v + 4) // 8 * 8)


class _B:
    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.n = 0

    def name(self, base: str) -> str:
        self.n += 1
        return f"{base}_{self.n}"

    def init(self, a: np.ndarray, base: str) -> str:
        nm = self.name(base)
        self.inits.append(numpy_helper.from_array(np.asarray(a, np.float32), nm))
        return nm

    def node(self, op: str, ins: list[str], base: str, **attrs: object) -> str:
        out = self.name(base)
        self.nodes.append(helper.make_node(op, ins, [out], name=out, **attrs))
        return out

    def conv(self, x: str, cin: int, cout: int, k: int, stride: int = 1, groups: int = 1,
             bias: bool = False) -> str:  # fmt: skip
        fan_in = cin // groups * k * k
        w = self.rng.standard_normal((cout, cin // groups, k, k)) * np.sqrt(2.0 / fan_in)
        ins = [x, self.init(w, "w")]
        if bias:
            ins.append(self.init(self.rng.standard_normal(cout) * 0.1, "b"))
        p = k // 2
        return self.node("Conv", ins, "conv", kernel_shape=[k, k], strides=[stride, stride],
                         pads=[p, p, p, p], group=groups)  # fmt: skip

    def bn(self, x: str, c: int) -> str:
        scale = self.init(1.0 + 0.1 * self.rng.standard_normal(c), "gamma")
        bias = self.init(0.1 * self.rng.standard_normal(c), "beta")
        mean = self.init(0.1 * self.rng.standard_normal(c), "mean")
        var = self.init(1.0 + 0.5 * self.rng.random(c), "var")
        return self.node("BatchNormalization", [x, scale, bias, mean, var], "bn", epsilon=1e-5)

    def hswish(self, x: str) -> str:
        return self.node("HardSwish", [x], "hswish")

    def se(self, x: str, c: int) -> str:
        s = self.node("GlobalAveragePool", [x], "se_pool")
        s = self.node("Relu", [self.conv(s, c, c // 4, 1, bias=True)], "se_relu")
        s = self.node("HardSigmoid", [self.conv(s, c // 4, c, 1, bias=True)], "se_gate",
                      alpha=1.0 / 6.0, beta=0.5)  # fmt: skip
        return self.node("Mul", [x, s], "se_mul")


def pp_lcnet(
    scale: float = 0.5, resolution: int = 224, num_classes: int = 1000, seed: int = 0
) -> onnx.ModelProto:
    """PP-LCNet-x``scale`` at ``resolution`` (batch 1, NCHW float32 input ``input``)."""
    b = _B(seed)
    c = _div8(16 * scale)
    x = b.hswish(b.bn(b.conv("input", 3, c, 3, stride=2), c))
    for k, _cin, cout, stride, se in NET_CONFIG:
        co = _div8(cout * scale)
        x = b.hswish(b.bn(b.conv(x, c, c, k, stride=stride, groups=c), c))
        if se:
            x = b.se(x, c)
        x = b.hswish(b.bn(b.conv(x, c, co, 1), co))
        c = co
    x = b.node("GlobalAveragePool", [x], "gap")
    x = b.hswish(b.conv(x, c, 1280, 1, bias=True))
    x = b.node("Flatten", [x], "flatten", axis=1)
    w = b.init(b.rng.standard_normal((num_classes, 1280)) * np.sqrt(1.0 / 1280), "fc_w")
    bias = b.init(np.zeros(num_classes), "fc_b")
    b.nodes.append(helper.make_node("Gemm", [x, w, bias], ["logits"], name="fc", transB=1))
    graph = helper.make_graph(
        b.nodes,
        f"pp_lcnet_x{scale}",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, resolution, resolution])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, num_classes])],
        b.inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    from mcopt.testing.zoo import randomize_weights

    return randomize_weights(model, seed)


__all__ = ["NET_CONFIG", "pp_lcnet"]
