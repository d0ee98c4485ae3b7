"""The command line: exit codes, one-line errors, stats/report/passes output."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

from mcopt.cli import main
from mcopt.testing import zoo


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("m") / "tiny.onnx"
    p.write_bytes(zoo.tiny_cnn(seed=0).SerializeToString())
    return p


def _one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("mcopt: error:"), err
    assert len(err.splitlines()) == 1, err
    return err


def test_help_lists_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for cmd in ("optimize", "stats", "report", "passes"):
        assert cmd in out


def test_optimize_no_compile_writes_outputs(
    tiny_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = tiny_path.read_bytes()
    rc = main(["optimize", str(tiny_path), "--target", "none", "-o", str(tmp_path / "out"), "-q"])
    assert rc == 0
    onnx.checker.check_model(onnx.load(str(tmp_path / "out" / "model.onnx")))
    assert (tmp_path / "out" / "report.md").exists()
    assert tiny_path.read_bytes() == before
    assert main(["report", str(tmp_path / "out")]) == 0
    assert "mcopt report" in capsys.readouterr().out


def test_optimize_print_ir_shows_the_planned_graph(
    tiny_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("tvm")
    out = tmp_path / "out"
    rc = main(["optimize", str(tiny_path), "-o", str(out), "-q", "--no-measure", "--print-ir"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "# optimized IR" in text and "# planned graph (what the cpu build lowered)" in text
    assert "fused_conv2d(" in text and "@NCHW" in text
    planned = (out / "model.planned.ir.txt").read_text()
    assert "fused_conv2d(" in planned


def test_stats_prints_table(tiny_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["stats", str(tiny_path)]) == 0
    out = capsys.readouterr().out
    assert "conv2d" in out and "MACs" in out


def test_passes_lists_cleanup(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["passes"]) == 0
    assert "fold-batch-norm" in capsys.readouterr().out


@pytest.mark.parametrize(
    "content, expect",
    [(b"", "empty"), (b"this is not an onnx model", ""), (None, "no such file")],
)
def test_bad_model_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes | None, expect: str
) -> None:
    p = tmp_path / "bad.onnx"
    if content is not None:
        p.write_bytes(content)
    rc = main(["stats", str(p)])
    assert rc == 1
    err = _one_line_error(capsys)
    assert "bad.onnx" in err
    assert expect.lower() in err.lower()


def test_truncated_model(
    tiny_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    p = tmp_path / "trunc.onnx"
    data = tiny_path.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    assert main(["stats", str(p)]) == 1
    assert "trunc.onnx" in _one_line_error(capsys)


def test_bad_options(tiny_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(
            [
                "optimize",
                str(tiny_path),
                "--passes",
                "nope",
                "--target",
                "none",
                "-o",
                str(tmp_path / "o"),
            ]
        )
        == 1
    )
    assert "nope" in _one_line_error(capsys)
    assert main(["stats", str(tiny_path), "--input-shape", "x=a,b"]) == 1
    assert "--input-shape" in _one_line_error(capsys)
    assert main(["report", str(tmp_path)]) == 1
    assert "report.md" in _one_line_error(capsys)


def test_python_dash_m(tiny_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "mcopt", "stats", str(tiny_path), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert '"macs"' in proc.stdout


def test_input_value_fixes_an_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--input-value NAME=V``: the input is a constant of the build; a name the model lacks or a
    value that is not a number is a one-line error."""
    sys.path.insert(0, str(Path(__file__).parent))
    from test_vad_patterns import _if_model

    p = tmp_path / "if.onnx"
    onnx.save(_if_model(cond_from_shape=False), p)
    out = tmp_path / "out"
    rc = main(
        ["optimize", str(p), "--target", "none", "--input-value", "c=0", "-o", str(out), "-q"]
    )
    assert rc == 0 and (out / "model.onnx").exists()
    assert [i.name for i in onnx.load(out / "model.onnx").graph.input] == ["x"]
    report = json.loads((out / "report.json").read_text())
    assert report["input_values"] == {"c": 0}
    again = tmp_path / "again"  # replaying the report fixes the input again
    rc = main(["optimize", str(p), "--target", "none", "--config", str(out / "report.json"),
               "-o", str(again), "-q"])  # fmt: skip
    assert rc == 0 and [i.name for i in onnx.load(again / "model.onnx").graph.input] == ["x"]
    bad = ["optimize", str(p), "--target", "none", "-o", str(tmp_path / "bad"), "-q"]
    assert main([*bad, "--input-value", "k=1"]) == 1
    assert "unknown input(s) ['k']" in _one_line_error(capsys)
    assert main([*bad, "--input-value", "c=yes"]) == 1
    assert "--input-value 'c=yes'" in _one_line_error(capsys)
