"""mcopt.tune() / `mcopt tune` and optimize(db=...): the wiring from the API and CLI to the tuner."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import mcopt
from mcopt import interpreter
from mcopt.cli import main
from mcopt.testing import zoo

tvm = pytest.importorskip("tvm")
pytestmark = pytest.mark.tvm


def test_tune_then_optimize_with_db(tmp_path: Path) -> None:
    model = zoo.lenet300_path()
    db = tmp_path / "db"
    report = mcopt.tune(model, target="cpu", trials=4, db=db, progress=False)
    assert (db / "database_tuning_record.json").exists()
    assert report.to_markdown()
    res = mcopt.optimize(model, target="cpu", db=db)
    assert any("tuning database" in n for n in res.notes)
    x = np.random.default_rng(0).standard_normal(res.graph.inputs[0].shape).astype(np.float32)
    ref = interpreter.run(res.graph, [x])[0]
    np.testing.assert_allclose(res.run(x)[0], ref, rtol=1e-4, atol=1e-5)


def test_cli_tune_bad_trials(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    rc = main(["tune", str(zoo.lenet300_path()), "--trials", "0", "--db", str(tmp_path / "db")])
    assert rc == 1
    assert "--trials" in capsys.readouterr().err
