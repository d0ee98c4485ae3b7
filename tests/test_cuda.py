"""CUDA targets: registry entries, GPU builds with DLight schedules (no GPU needed), and numerical
runs where a GPU exists (skipped cleanly elsewhere)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")

import mcopt.targets.cuda.builder  # noqa: E402,F401  (registers the cuda targets)
from mcopt import interpreter  # noqa: E402
from mcopt.api import load  # noqa: E402
from mcopt.errors import OptionError, TargetError  # noqa: E402
from mcopt.testing import zoo  # noqa: E402

pytestmark = pytest.mark.tvm


@pytest.fixture(scope="module")
def tiny() -> tuple[object, np.ndarray]:
    g = load(zoo.tiny_cnn())
    x = np.random.default_rng(0).standard_normal(g.inputs[0].shape).astype(np.float32)
    return g, x


@pytest.fixture(scope="module")
def cuda_model(tiny):  # type: ignore[no-untyped-def]
    from mcopt.targets.cuda.builder import build_cuda

    return build_cuda(tiny[0], "cuda:sm_80")


@pytest.mark.parametrize(
    "name,arch",
    [("cuda", "sm_80"), ("gpu", "sm_80"), ("cuda:sm_90", "sm_90"), ("cuda:t4", "sm_75")],
)
def test_cuda_registry(name: str, arch: str) -> None:
    from mcopt.targets import get_target

    spec = get_target(name)
    assert spec.kind == "cuda" and not spec.host_runnable
    t = spec.tvm_target()
    assert t.kind.name == "cuda" and str(t.attrs["arch"]) == arch
    assert t.host is not None and t.host.kind.name == "llvm"
    assert "gpu" in [str(k) for k in t.keys]


def test_cuda_custom_target_and_bad_arch() -> None:
    from mcopt.targets.cuda.builder import cuda_target

    assert str(cuda_target("jetson", arch="sm_87").tvm_target().attrs["arch"]) == "sm_87"
    with pytest.raises(OptionError, match="sm_XX"):
        cuda_target("bad", arch="ampere").tvm_target()


def test_cuda_build_binds_every_kernel(cuda_model, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Compiling needs no GPU; every kernel got a DLight GPU schedule (checked inside the build)
    and the library exports."""
    lib = cuda_model.export_library(tmp_path / "model_cuda.so")
    assert lib.is_file() and lib.stat().st_size > 0
    # the device module is in the executable: host llvm module importing a cuda module
    kinds = [m.kind for m in cuda_model.executable.mod.imports_[0].imports_]
    assert "cuda" in kinds


def test_unbound_primfuncs_detects_host_code(tiny) -> None:  # type: ignore[no-untyped-def]
    from tvm import relax

    from mcopt.targets.cuda.builder import unbound_primfuncs
    from mcopt.targets.relax.lower import lower

    legalized = relax.transform.LegalizeOps()(lower(tiny[0]))  # no DLight: plain loops
    assert unbound_primfuncs(legalized)


def test_cuda_run_without_gpu_is_clear(cuda_model, tiny) -> None:  # type: ignore[no-untyped-def]
    from mcopt.targets.cuda.builder import gpu_available

    if gpu_available():
        pytest.skip("a GPU is present")
    with pytest.raises(TargetError, match="needs a CUDA GPU"):
        cuda_model.run(tiny[1])


@pytest.mark.gpu
def test_cuda_matches_reference_on_gpu(cuda_model, tiny) -> None:  # type: ignore[no-untyped-def]
    from mcopt.targets.cuda.builder import gpu_available

    if not gpu_available():
        pytest.skip("no CUDA GPU (tvm.cuda().exist is False)")
    g, x = tiny
    ref = interpreter.run(g, [x])
    got = cuda_model.run(x)
    for o, r in zip(got, ref):
        err = float(np.abs(o.astype(np.float64) - r).max()) / max(float(np.abs(r).max()), 1e-6)
        assert err < 1e-4, f"relative error {err:.2e}"
    t = cuda_model.benchmark([x], number=5, repeat=2)
    assert t["median_ms"] > 0
