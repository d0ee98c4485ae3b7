"""Instruction counting under qemu-user (:mod:`mcopt.targets.arm.icount`): the plugin's counting
windows are exact and repeatable on a trivial aarch64 program and grow with the work done; the
guest runner's count per inference repeats and grows with the number of inferences.

Skips (with the reason) where ``scripts/setup_icount.sh`` has not been run. No timing asserts.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from mcopt.targets.arm import icount

_REASON = icount.unavailable_reason()
pytestmark = pytest.mark.skipif(_REASON is not None, reason=str(_REASON))

_LOOP_C = r"""
#include <stdlib.h>
#include <unistd.h>
int main(int argc, char **argv) {
    volatile long s = 0;
    for (int k = 1; k < argc; k++) {
        long n = atol(argv[k]);
        syscall(%(marker)d, 1L);
        for (long i = 0; i < n; i++) s += i;
        syscall(%(marker)d, 2L, -1L, (long)k);
    }
    return 0;
}
"""


@pytest.fixture(scope="module")
def loop_program(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cc = shutil.which("aarch64-linux-gnu-gcc")
    if cc is None:
        pytest.skip("aarch64-linux-gnu-gcc is not installed (run scripts/setup_aarch64.sh)")
    d = tmp_path_factory.mktemp("icount")
    src, exe = d / "loop.c", d / "loop"
    src.write_text(_LOOP_C % {"marker": icount.MARKER})
    proc = subprocess.run([cc, "-O1", "-static", "-o", str(exe), str(src)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot build a static aarch64 program: {proc.stderr.decode()[-300:]}")
    return exe


@pytest.mark.parametrize("inline", [True, False], ids=["inline", "callback"])
def test_windows_are_exact_and_linear(loop_program: Path, inline: bool) -> None:
    res = icount.count_program([loop_program, 1000, 1000, 2000, 3000, 0], inline=inline)
    assert res["returncode"] == 0, res["stderr"]
    tags = [t for t, _ in res["windows"]]
    assert tags == [1, 2, 3, 4, 5]
    w1, w1b, w2, w3, w0 = (c for _, c in res["windows"])
    assert w1 == w1b  # the same work, the same count
    assert w0 < w1 < w2 < w3
    per_iter = w2 - w1
    assert per_iter > 0 and w3 - w2 == per_iter  # linear in the loop count
    assert res["total"] > w3
    again = icount.count_program([loop_program, 1000, 1000, 2000, 3000, 0], inline=inline)
    assert again["windows"] == res["windows"]


def test_inline_and_callback_agree(loop_program: Path) -> None:
    a = icount.count_program([loop_program, 5000], inline=True)["windows"]
    b = icount.count_program([loop_program, 5000], inline=False)["windows"]
    assert a == b and a[0][1] > 5000


def _tiny_onnx(path: Path) -> np.ndarray:
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"]), helper.make_node("Relu", ["y"], ["z"])],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 64])],
        [numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return w


@pytest.mark.slow
def test_guest_runner_repeats_and_grows_with_n(tmp_path: Path) -> None:
    w = _tiny_onnx(tmp_path / "tiny.onnx")
    x = np.random.default_rng(1).standard_normal((1, 64)).astype(np.float32)
    jobs = [
        icount.IcountJob(f"n{n}", "onnx", tmp_path / "tiny.onnx", [x], n=n) for n in (1, 8, 1, 8)
    ]
    rows = icount.count_instructions(jobs)
    np.testing.assert_allclose(rows[0]["outputs"][0], np.maximum(x @ w, 0), rtol=1e-4, atol=1e-4)
    for r in rows:
        assert r["per_inference"] > 0 and r["empty"] > 0
    # more inferences, more instructions; per inference about the same
    assert rows[1]["window"] > rows[0]["window"] and rows[3]["window"] > rows[2]["window"]
    assert rows[1]["window"] - rows[1]["empty"] > 4 * (rows[0]["window"] - rows[0]["empty"])
    again = icount.count_instructions(jobs)
    for a, b in zip(rows[1::2], again[1::2]):
        assert abs(a["per_inference"] - b["per_inference"]) <= 0.01 * a["per_inference"]
