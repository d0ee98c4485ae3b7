"""Drop-in outputs: the exported model.onnx keeps the original input / output names and the symbolic
batch of the imported model, after every pipeline that exports — and computes what the IR computes
at batch 1 and 4 (onnxruntime vs the reference interpreter, sample by sample)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import mcopt
from mcopt import interpreter
from mcopt.errors import OptionError
from mcopt.onnx_io import export_model
from mcopt.testing import zoo

PIPELINES = {
    "lossless": ["cleanup"],
    "int8": ["cleanup", "quantize-int8"],
    "pruned": ["cleanup", "prune-weights:sparsity=0.8"],
    "channels": ["cleanup", "prune-channels:ratio=0.3"],
    "lowrank": ["cleanup", "lowrank-dense"],
    "factorized": ["cleanup", "factorize-spatial"],
    "kmeans": ["cleanup", "kmeans-share"],
    "winograd": ["cleanup", "winograd"],
    "binary": ["cleanup", "binarize-weights"],
}
MODELS = {
    "lenet5": lambda: onnx.load(zoo.lenet5_path()),
    "tiny_cnn": lambda: zoo.tiny_cnn(seed=0, dynamic_batch=True),
}


@pytest.mark.parametrize("model", sorted(MODELS))
@pytest.mark.parametrize("pipeline", sorted(PIPELINES))
def test_exported_model_is_a_drop_in_replacement(model: str, pipeline: str) -> None:
    proto = MODELS[model]()
    in_name, out_name = proto.graph.input[0].name, proto.graph.output[0].name
    res = mcopt.optimize(proto, target=None, passes=PIPELINES[pipeline])
    exported = export_model(res.graph)
    onnx.checker.check_model(exported, full_check=True)
    sess = ort.InferenceSession(exported.SerializeToString(), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == [in_name]
    assert [o.name for o in sess.get_outputs()] == [out_name]
    assert isinstance(sess.get_inputs()[0].shape[0], str)  # the batch stays symbolic
    rng = np.random.default_rng(0)
    for batch in (1, 4):
        x = rng.standard_normal((batch, *res.graph.inputs[0].shape[1:])).astype(np.float32)
        (got,) = sess.run([out_name], {in_name: x})
        want = np.concatenate([interpreter.run(res.graph, [x[i : i + 1]])[0] for i in range(batch)])
        assert got.shape == want.shape
        scale = float(np.abs(want).max())
        assert float(np.abs(got - want).max()) <= 2e-3 * scale + 1e-5, pipeline


def test_a_static_model_stays_static_and_forcing_says_why() -> None:
    res = mcopt.optimize(zoo.tiny_cnn(seed=0), target=None, passes=["cleanup"])  # batch fixed at 1
    m = export_model(res.graph)
    assert m.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1
    with pytest.raises(OptionError, match="batch"):
        export_model(res.graph, dynamic_batch=True)


def test_a_graph_tied_to_its_batch_exports_static() -> None:
    from mcopt.ir.core import Graph
    from mcopt.ir.types import ttype

    g = Graph("g")
    x = g.add_input("x", ttype((1, 4)))
    r = g.add_node("reshape", [x], {"shape": (4,)}, name="drop_batch")
    g.outputs.append(r.output)
    g.metadata["dynamic_dims"] = {"x": {"0": "N"}}
    assert export_model(g).graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1
    with pytest.raises(OptionError, match="drop_batch"):
        export_model(g, dynamic_batch=True)
