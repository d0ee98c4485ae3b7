"""The C API (mcopt.targets.capi): a C program compiled against mcopt_runtime.h loads a saved
model.so + model.io.txt and returns what ``CompiledModel.run`` returns; errors are one line in
``err``, never an abort. No timing here (the overhead is measured by ``mcopt_example --repeat``)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from mcopt.targets.capi import (
    EXAMPLE,
    IO_FILE,
    compile_command,
    io_description,
    tvm_paths,
    write_sources,
)
from mcopt.targets.toolchain import HOST_CC, find_compiler

CC = find_compiler(HOST_CC)

#: API-level checks the example program cannot reach: argument errors, a TVM error's text,
#: loading and freeing twice
ERRORS_C = r"""
#include <stdio.h>
#include <string.h>
#include "mcopt_runtime.h"

int main(int argc, char** argv) {
  char err[512];
  (void)argc;
  if (mcopt_load("/nonexistent/model.so", err, sizeof err) != NULL) return 10;
  printf("missing: %s\n", err);
  if (mcopt_load_with_io(argv[1], argv[2], err, sizeof err) != NULL) return 11;
  printf("bad io: %s\n", err);
  if (mcopt_num_inputs(NULL) != 0 || mcopt_input(NULL, 0) != NULL) return 12;
  for (int round = 0; round < 2; ++round) {
    mcopt_model* m = mcopt_load(argv[1], err, sizeof err);
    if (m == NULL) { printf("load failed: %s\n", err); return 13; }
    if (mcopt_input(m, -1) != NULL || mcopt_output(m, mcopt_num_outputs(m)) != NULL) return 14;
    static float x[1 << 16], y[1 << 16];
    const void* ins[2] = {x, x};
    void* outs[1] = {y};
    if (mcopt_run(m, ins, 2, outs, 1, err, sizeof err) == 0) return 15;
    printf("count: %s\n", err);
    const void* none[1] = {NULL};
    if (mcopt_run(m, none, 1, outs, 1, err, sizeof err) == 0) return 16;
    printf("null: %s\n", err);
    if (mcopt_run(m, ins, 1, outs, 1, err, sizeof err) != 0) { printf("run: %s\n", err); return 17; }
    mcopt_free(m);
  }
  mcopt_free(NULL);
  printf("ok\n");
  return 0;
}
"""


def _compile(tmp: Path, program: Path, name: str) -> Path:
    exe = tmp / name
    cmd = compile_command([program, tmp / "mcopt_runtime.c"], exe, compiler=str(CC))
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stderr}"
    return exe


@pytest.fixture(scope="module")
def programs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """mcopt_example and the errors program, compiled once."""
    if CC is None:
        pytest.skip("no C compiler (install gcc: apt-get install gcc)")
    pytest.importorskip("tvm", reason="the C API links with the apache-tvm wheel's runtime")
    tvm_paths()  # a one-line TargetError when a wheel's library or header is missing
    tmp = tmp_path_factory.mktemp("capi")
    write_sources(tmp)
    (tmp / "errors.c").write_text(ERRORS_C)
    return {
        "example": _compile(tmp, tmp / EXAMPLE, "mcopt_example"),
        "errors": _compile(tmp, tmp / "errors.c", "errors"),
    }


def _save(proto: onnx.ModelProto, out: Path) -> Any:
    import mcopt

    result = mcopt.optimize(proto, target="cpu", measure=False, check=False)
    result.save(out)
    return result


def _run_c(exe: Path, out: Path, inputs: list[np.ndarray], result: Any) -> list[np.ndarray]:
    """Run mcopt_example on raw input files; the outputs it wrote, shaped like the graph's."""
    names = [out / f"in{i}.bin" for i in range(len(inputs))]
    for a, p in zip(inputs, names):
        p.write_bytes(np.ascontiguousarray(a).tobytes())
    outs = [out / f"out{i}.bin" for i in range(len(result.graph.outputs))]
    proc = subprocess.run(
        [exe, out / "model.so", *names, *outs], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    return [
        np.fromfile(p, dtype=v.dtype).reshape(v.shape) for p, v in zip(outs, result.graph.outputs)
    ]


@pytest.fixture(scope="module")
def tiny(programs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    """tiny_cnn optimized for the CPU and saved: (the result, its directory)."""
    from mcopt.testing.zoo import tiny_cnn

    out = tmp_path_factory.mktemp("tiny")
    return _save(tiny_cnn(), out), out


@pytest.mark.tvm
def test_tiny_cnn_matches_python(programs: dict[str, Path], tiny: tuple[Any, Path]) -> None:
    result, tmp_path = tiny
    io = (tmp_path / IO_FILE).read_text()
    assert "input float32 [1,3,32,32] input\n" in io and "output float32 [1,10] output\n" in io
    for seed in range(2):
        x = np.random.default_rng(seed).standard_normal((1, 3, 32, 32)).astype(np.float32)
        (got,) = _run_c(programs["example"], tmp_path, [x], result)
        np.testing.assert_allclose(got, result.compiled.run(x)[0], rtol=1e-6, atol=1e-6)
    # no files: it prints the I/O and runs on zeros
    proc = subprocess.run(
        [programs["example"], tmp_path / "model.so"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert "input input float32 [1,3,32,32] 12288 bytes" in proc.stdout


def _two_outputs() -> onnx.ModelProto:
    """Two inputs and two outputs of different shapes; main allocates (main_bound)."""
    g = helper.make_graph(
        [
            helper.make_node("Add", ["a", "b"], ["s"]),
            helper.make_node("Relu", ["s"], ["r"]),
            helper.make_node("ReduceMean", ["s"], ["t"], keepdims=1),
        ],
        "two",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, [2, 5]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, [2, 5]),
        ],
        [
            helper.make_tensor_value_info("r", TensorProto.FLOAT, [2, 5]),
            helper.make_tensor_value_info("t", TensorProto.FLOAT, [1, 1]),
        ],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    return m


def _identity() -> onnx.ModelProto:
    """main allocates nothing (no main_bound): the C API calls main, whose output is its input."""
    g = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "id",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 4])],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    return m


@pytest.mark.tvm
@pytest.mark.parametrize("make", [_two_outputs, _identity], ids=["two-outputs", "identity"])
def test_small_models_match_python(make: Any, programs: dict[str, Path], tmp_path: Path) -> None:
    result = _save(make(), tmp_path)
    rng = np.random.default_rng(1)
    xs = [rng.standard_normal(v.shape).astype(v.dtype) for v in result.graph.inputs]
    got = _run_c(programs["example"], tmp_path, xs, result)
    want = result.compiled.run(*xs)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-6)


@pytest.mark.tvm
def test_errors_are_one_line(
    programs: dict[str, Path], tiny: tuple[Any, Path], tmp_path: Path
) -> None:
    saved = tiny[1]
    bad = tmp_path / "bad.io.txt"  # the right library, a wrong input shape: TVM's check fails
    bad.write_text((saved / IO_FILE).read_text().replace("[1,3,32,32]", "[1,3,32,31]"))
    proc = subprocess.run(
        [programs["errors"], saved / "model.so", bad], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = dict(line.split(": ", 1) for line in proc.stdout.splitlines() if ": " in line)
    assert lines["missing"].startswith("cannot open /nonexistent/model.so")
    assert "main_bound" in lines["bad io"] and "31 vs. 32" in lines["bad io"]
    assert "has 1 input(s) and 1 output(s), got 2 and 1" in lines["count"]
    assert "input 0 (input) is NULL" in lines["null"]
    assert proc.stdout.splitlines()[-1] == "ok"


def test_io_description_format() -> None:
    from mcopt.errors import TargetError

    text = io_description(
        [("x y", (1, 3), "float32"), ("s", (), "int64")], [("out", (1, 10), "int8")]
    )
    assert text.splitlines()[0] == "mcopt-io 1"
    assert "input float32 [1,3] x y" in text and "input int64 [] s" in text
    assert "output int8 [1,10] out" in text
    with pytest.raises(TargetError, match="non-static"):
        io_description([("x", (-1, 3), "float32")], [])
    with pytest.raises(TargetError, match="one line"):
        io_description([("a\nb", (1,), "float32")], [])


def test_cli_writes_sources(tmp_path: Path) -> None:
    if CC is None:
        pytest.skip("no C compiler")
    try:
        tvm_paths()
    except Exception as e:  # noqa: BLE001 - a missing wheel: nothing to link with
        pytest.skip(str(e))
    from mcopt.cli import main

    assert main(["capi", str(tmp_path)]) == 0
    for name in ("mcopt_runtime.h", "mcopt_runtime.c", EXAMPLE):
        assert (tmp_path / name).exists()


def test_sources_ship_as_package_data() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    from mcopt.targets.capi import SOURCES, source_dir

    root = Path(__file__).resolve().parent.parent
    conf = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "mcopt.targets.capi" in conf["packages"]
    assert {"*.h", "*.c"} <= set(conf["package-data"]["mcopt.targets.capi"])
    for name in (*SOURCES, EXAMPLE):
        assert (source_dir() / name).is_file()
