"""The thread pool size mcopt sets for TVM (targets/cpu/host_threads.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from mcopt.targets.cpu.host_threads import THREAD_ENV, configure_threads, physical_cores

pytest.importorskip("tvm")

_CHILD = r"""
import json, sys
import numpy as np
import tvm
from mcopt import interpreter
from mcopt.testing import zoo
from mcopt.api import load
from mcopt.targets import build

g = load(zoo.mobilenet_v2(width_mult=0.25, resolution=32, num_classes=10))
x = np.random.default_rng(0).standard_normal(tuple(g.inputs[0].shape)).astype(np.float32)
got = build(g, "cpu").run(x)[0]
ref = interpreter.run(g, [x])[0]
err = float(np.abs(got - ref).max() / max(np.abs(ref).max(), 1e-30))
print(json.dumps({"threads": tvm.runtime.num_threads(), "err": err}))
"""


def _child(env_extra: dict[str, str]) -> dict[str, float]:
    env = {k: v for k, v in os.environ.items() if k not in THREAD_ENV}
    env["MCOPT_MIN_PARALLEL_WORK"] = "0"  # every kernel on the pool, however small
    env.update(env_extra)
    out = subprocess.run(
        [sys.executable, "-c", _CHILD], env=env, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_physical_cores_within_cpu_count():
    assert 1 <= physical_cores() <= (os.cpu_count() or 1)


def test_configure_threads_respects_the_users_choice(monkeypatch):
    monkeypatch.setenv("TVM_NUM_THREADS", "3")
    assert configure_threads() is None
    assert os.environ["TVM_NUM_THREADS"] == "3"
    monkeypatch.delenv("TVM_NUM_THREADS")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert configure_threads() is None
    assert "TVM_NUM_THREADS" not in os.environ
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert configure_threads() == physical_cores()
    assert os.environ["TVM_NUM_THREADS"] == str(physical_cores())


def test_default_pool_uses_every_physical_core_and_matches_the_interpreter():
    """A fresh process without TVM_NUM_THREADS runs on all physical cores (TVM alone would take
    half the logical CPUs on x86) and a parallel MobileNet-V2 still matches the interpreter."""
    res = _child({})
    assert res["threads"] == physical_cores()
    assert res["err"] < 1e-4
    assert _child({"TVM_NUM_THREADS": "1"})["threads"] == 1
