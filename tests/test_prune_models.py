"""Channel pruning of the zoo's ImageNet architectures (random weights) at 30% and 50%: the pruned
graphs verify, run in the interpreter and in onnxruntime after export, and have fewer params and MACs."""

from __future__ import annotations

import numpy as np
import pytest

from mcopt.analysis.channels import analyze_channels
from mcopt.analysis.cost import graph_stats
from mcopt.interpreter import run
from mcopt.ir import verify
from mcopt.onnx_io import export_model, import_model
from mcopt.pass_manager import PassContext, get_pass
from mcopt.testing import zoo

MODELS = {
    "resnet50": lambda: zoo.light_model("resnet50"),
    "squeezenet": lambda: zoo.light_model("squeezenet"),
    "inception_v1": lambda: zoo.light_model("inception_v1"),
    "densenet121": lambda: zoo.light_model("densenet121"),
    "mobilenet_v2": lambda: zoo.mobilenet_v2(),
}


@pytest.fixture(scope="module", params=sorted(MODELS))
def model(request: pytest.FixtureRequest):
    return request.param, import_model(MODELS[request.param]())


@pytest.mark.slow
@pytest.mark.parametrize("ratio", [0.3, 0.5])
def test_channel_pruning_big_models(model, ratio: float) -> None:
    import onnxruntime as ort

    name, g0 = model
    assert sum(gr.num_prunable > 0 for gr in analyze_channels(g0).groups()) >= 10
    g = g0.copy()
    assert get_pass("prune-channels", ratio=ratio)(g, PassContext())
    verify(g)
    s0, s1 = graph_stats(g0), graph_stats(g)
    # every layer loses about `ratio` of its output channels and of its input channels
    assert s1.params < (1 - ratio) * s0.params
    assert s1.macs < (1 - ratio) * s0.macs
    x = np.random.default_rng(0).standard_normal(g.inputs[0].shape).astype(np.float32)
    y = run(g, [x])[0]
    assert y.shape == g0.outputs[0].shape and np.isfinite(y).all()
    sess = ort.InferenceSession(
        export_model(g).SerializeToString(), providers=["CPUExecutionProvider"]
    )
    y_ort = sess.run(None, {g.inputs[0].name: x})[0]
    np.testing.assert_allclose(y_ort, y, rtol=1e-3, atol=1e-4 * (1 + np.abs(y).max()))
    # dead-neuron removal after pruning is exact
    g2 = g.copy()
    get_pass("remove-dead-neurons")(g2, PassContext())
    verify(g2)
    np.testing.assert_allclose(run(g2, [x])[0], y, rtol=1e-4, atol=1e-5)
