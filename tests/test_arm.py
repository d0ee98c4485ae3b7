"""ARM targets: registry entries, aarch64 cross-compilation, and a real run under qemu-user.

The emulated run needs ``scripts/setup_aarch64.sh`` (qemu-user-static, g++-aarch64-linux-gnu and the
aarch64 Python/TVM sysroot); without it those tests skip with the reason.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")

import mcopt.targets.arm.builder  # noqa: E402,F401  (registers the arm targets)
from mcopt import interpreter  # noqa: E402
from mcopt.api import load  # noqa: E402
from mcopt.errors import OptionError, TargetError  # noqa: E402
from mcopt.testing import zoo  # noqa: E402

pytestmark = pytest.mark.tvm

EM_AARCH64 = 183  # ELF e_machine of aarch64


def _elf_machine(path: Path) -> int:
    head = path.read_bytes()[:20]
    assert head[:4] == b"\x7fELF", f"{path} is not an ELF file"
    return int.from_bytes(head[18:20], "little")


def _cross_reason() -> str | None:
    import shutil

    from mcopt.targets.arm.builder import CROSS_CXX

    return (
        None if shutil.which(CROSS_CXX) else f"{CROSS_CXX} not installed (scripts/setup_aarch64.sh)"
    )


def _emu_reason() -> str | None:
    from mcopt.targets.arm.emulate import unavailable_reason

    return unavailable_reason()


@pytest.fixture(scope="module")
def tiny() -> tuple[object, np.ndarray, list[np.ndarray]]:
    g = load(zoo.tiny_cnn())
    x = np.random.default_rng(0).standard_normal(g.inputs[0].shape).astype(np.float32)
    return g, x, interpreter.run(g, [x])


@pytest.fixture(scope="module")
def arm_model(tiny):  # type: ignore[no-untyped-def]
    from mcopt.targets.arm.builder import build_arm

    return build_arm(tiny[0], "arm:cortex-a76")


# --- registry -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name,mcpu,has,lacks",
    [
        ("arm", None, ["+neon"], ["+dotprod"]),
        ("arm:a53", "cortex-a53", ["+neon"], ["+dotprod"]),
        ("arm:cortex-a55", "cortex-a55", ["+neon", "+dotprod", "+fullfp16"], ["+i8mm"]),
        ("arm:cortex-a76", "cortex-a76", ["+neon", "+dotprod", "+fullfp16"], ["+sve"]),
        ("arm:neoverse-n1", "neoverse-n1", ["+dotprod"], ["+i8mm"]),
        ("arm:neoverse-v1", "neoverse-v1", ["+i8mm", "+sve", "+bf16"], []),
        ("arm:n2", "neoverse-n2", ["+i8mm", "+sve2"], []),
    ],
)
def test_arm_registry(name: str, mcpu: str | None, has: list[str], lacks: list[str]) -> None:
    from mcopt.targets import get_target

    spec = get_target(name)
    assert spec.kind == "llvm" and not spec.host_runnable
    t = spec.tvm_target()
    assert str(t.attrs["mtriple"]) == "aarch64-linux-gnu"
    assert t.attrs.get("mcpu") == mcpu
    mattr = [str(a) for a in t.attrs["mattr"]]
    assert all(f in mattr for f in has), mattr
    assert not any(f in mattr for f in lacks), mattr
    assert "arm_cpu" in [str(k) for k in t.keys]
    assert spec.vector_lanes(32) == 4  # 128-bit NEON
    assert spec.num_cores >= 1
    # TVM's aarch64 parser agrees with the features we asked for
    assert bool(t.attrs["feature.has_dotprod"]) == ("+dotprod" in mattr)


def test_arm_custom_target_and_errors() -> None:
    from mcopt.targets import get_target, register_target
    from mcopt.targets.arm.builder import arm_target

    spec = register_target(arm_target("test-board", "cortex-a72", num_cores=2), replace=True)
    assert get_target("test-board") is spec
    assert spec.num_cores == 2 and spec.tvm_target().attrs["mcpu"] == "cortex-a72"
    with pytest.raises(OptionError, match="cortex-a9000"):
        arm_target("bad", "cortex-a9000").tvm_target()
    with pytest.raises(OptionError, match="num_cores"):
        arm_target("bad", "cortex-a53", num_cores=0)


def test_arm_build_rejects_other_targets(tiny) -> None:  # type: ignore[no-untyped-def]
    from mcopt.targets.arm.builder import build_arm

    with pytest.raises(TargetError, match="not an aarch64 target"):
        build_arm(tiny[0], "cpu")


# --- cross-compilation ---------------------------------------------------------------------------
def test_arm_export_is_aarch64_elf(arm_model, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    reason = _cross_reason()
    if reason:
        pytest.skip(reason)
    path = arm_model.export_library(tmp_path / "out" / "model.so")
    assert path.is_file() and _elf_machine(path) == EM_AARCH64
    assert not list(path.parent.glob(".model.so.*"))  # atomic write left no temp file


def test_optimize_target_arm_writes_aarch64_library(tmp_path: Path) -> None:
    """The headline call: optimize(model, target="arm") + save() -> an aarch64 model.so."""
    reason = _cross_reason()
    if reason:
        pytest.skip(reason)
    import mcopt

    res = mcopt.optimize(zoo.tiny_cnn(), target="arm", check=False, measure=False)
    written = res.save(tmp_path / "out")
    assert _elf_machine(Path(written["library"])) == EM_AARCH64


# --- a real run under emulation ------------------------------------------------------------------
def test_arm_runs_under_emulation(arm_model, tiny) -> None:  # type: ignore[no-untyped-def]
    """tiny_cnn compiled for Cortex-A76 runs in the aarch64 TVM runtime under qemu-user and
    matches the host reference interpreter; its timing is labelled as emulated."""
    reason = _emu_reason()
    if reason:
        pytest.skip(reason)
    from mcopt.targets.arm.emulate import run_emulated

    _, x, ref = tiny
    outs, timing = run_emulated(arm_model.library_path(), arm_model.bind(x), number=1, repeat=1)
    assert len(outs) == len(ref)
    for o, r in zip(outs, ref):
        assert o.shape == r.shape and o.dtype == r.dtype
        err = float(np.abs(o.astype(np.float64) - r).max()) / max(float(np.abs(r).max()), 1e-6)
        assert err < 1e-4, f"relative error {err:.2e} vs the host reference"
    assert timing is not None and timing["emulated"] is True and timing["median_ms"] > 0


def test_arm_emulated_errors_are_one_line(tmp_path: Path) -> None:
    reason = _emu_reason()
    if reason:
        pytest.skip(reason)
    from mcopt.targets.arm.emulate import run_emulated

    with pytest.raises(TargetError, match="no compiled library"):
        run_emulated(tmp_path / "missing.so", [])


def test_arm_run_without_emulator_says_how(arm_model, tiny, monkeypatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("MCOPT_AARCH64_ROOT", str(tmp_path / "nothing-here"))
    monkeypatch.delenv("MCOPT_AARCH64_PYTHON", raising=False)
    with pytest.raises(TargetError, match="setup_aarch64.sh"):
        arm_model.run(tiny[1])
