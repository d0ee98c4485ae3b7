"""mcopt.optimize(): inputs of every kind, the report, save() and numerical agreement."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import mcopt
from mcopt.errors import MCoptError, OptionError, ShapeError
from mcopt.testing import zoo


@pytest.fixture(scope="module")
def tiny_proto() -> onnx.ModelProto:
    return zoo.tiny_cnn(seed=0)


def _ort(proto: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def _feeds(proto: onnx.ModelProto, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    inits = {i.name for i in proto.graph.initializer}
    out = {}
    for i in proto.graph.input:
        if i.name not in inits:
            dims = [d.dim_value or 1 for d in i.type.tensor_type.shape.dim]
            out[i.name] = rng.standard_normal(dims).astype(np.float32)
    return out


def test_optimize_without_target_matches_onnxruntime(tiny_proto: onnx.ModelProto) -> None:
    res = mcopt.optimize(tiny_proto, target=None)
    feeds = _feeds(tiny_proto)
    ref = _ort(tiny_proto, feeds)
    got = res.run(feeds)
    for r, g in zip(ref, got):
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-4 * float(np.abs(r).max()))
    assert res.compiled is None
    # cleanup is lossless: the pass manager measured ~0 error against the original
    assert res.output_error["max_rel"] < 1e-4
    # batch norm folded away by the default pipeline
    assert not res.graph.nodes_of("batch_norm")
    assert res.cost_after.totals()["params"] <= res.cost_before.totals()["params"]


def test_optimize_accepts_path_bytes_and_graph(tiny_proto: onnx.ModelProto, tmp_path: Path) -> None:
    path = tmp_path / "tiny.onnx"
    path.write_bytes(tiny_proto.SerializeToString())
    before = path.read_bytes()
    r1 = mcopt.optimize(str(path), target=None)
    r2 = mcopt.optimize(path.read_bytes(), target=None)
    r3 = mcopt.optimize(r1.original, target=None)
    assert str(r1.graph) == str(r2.graph) == str(r3.graph)
    assert path.read_bytes() == before  # the user's file is never modified


def test_save_writes_valid_onnx_and_reports(tiny_proto: onnx.ModelProto, tmp_path: Path) -> None:
    res = mcopt.optimize(tiny_proto, target=None)
    written = res.save(tmp_path / "out")
    model = onnx.load(str(written["onnx"]))
    onnx.checker.check_model(model, full_check=True)
    feeds = _feeds(tiny_proto)
    for r, g in zip(_ort(tiny_proto, feeds), _ort(model, feeds)):
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-4 * float(np.abs(r).max()))
    summary = json.loads(written["report_json"].read_text())
    assert summary["before"]["params"] >= summary["after"]["params"] > 0
    assert "## Passes" in written["report_md"].read_text()
    assert not list((tmp_path / "out").glob(".*tmp*"))  # no temp files left behind


def test_calibration_inputs_are_checked(tiny_proto: onnx.ModelProto) -> None:
    name = next(iter(_feeds(tiny_proto)))
    good = _feeds(tiny_proto)[name]
    res = mcopt.optimize(tiny_proto, target=None, calib=np.concatenate([good, good]))
    # of two calibration inputs one is held out: the error is measured where no pass fitted
    assert res.output_error["samples"] == 1
    assert "held-out calibration inputs (1 of 2" in res.output_error["source"]
    with pytest.raises(ShapeError, match=name):
        mcopt.optimize(tiny_proto, target=None, calib=np.zeros((3, 5), np.float32))
    with pytest.raises(OptionError, match="does not exist"):
        mcopt.optimize(tiny_proto, target=None, calib="/nonexistent/calib.npz")


def test_unknown_pass_is_a_clear_error(tiny_proto: onnx.ModelProto) -> None:
    with pytest.raises(MCoptError, match="no-such-pass"):
        mcopt.optimize(tiny_proto, target=None, passes=["no-such-pass"])


def test_user_pass_registration_as_in_design(tiny_proto: onnx.ModelProto) -> None:
    from mcopt.ir import Graph

    @mcopt.register_pass
    class FoldDoubleRelu(mcopt.Pass):
        """relu(relu(x)) -> relu(x). Lossless."""

        name = "test-fold-double-relu"
        lossless = True

        def run(self, graph: Graph, ctx: object) -> bool:
            changed = False
            for node in graph.iter_nodes():
                src = node.inputs[0].producer if node.op == "relu" and node.inputs else None
                if src is not None and src.op == "relu":
                    graph.replace_all_uses_with(node.output, src.output)
                    graph.remove_node(node)
                    changed = True
            return changed

    g = mcopt.Graph("double")
    x = g.add_input("x", mcopt.TensorType((1, 4)))
    r1 = g.add_node("relu", [x])
    r2 = g.add_node("relu", [r1.output])
    g.outputs = [r2.output]
    res = mcopt.optimize(g, target=None, passes=["test-fold-double-relu"])
    assert [n.op for n in res.graph.nodes] == ["relu"]
    assert res.report.to_dict()  # the pass shows up in the report


@pytest.mark.tvm
def test_optimize_compiles_for_cpu(tiny_proto: onnx.ModelProto, tmp_path: Path) -> None:
    pytest.importorskip("tvm")
    res = mcopt.optimize(tiny_proto, target="cpu")
    feeds = _feeds(tiny_proto)
    for r, g in zip(_ort(tiny_proto, feeds), res.run(feeds)):
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-4 * float(np.abs(r).max()))
    measured = res.latency_ms  # a measurement was made (its value is not asserted)
    assert measured is not None and measured > 0
    written = res.save(tmp_path / "out")
    assert written["library"].stat().st_size > 0
