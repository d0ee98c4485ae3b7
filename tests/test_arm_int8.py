"""int8 on ARM: quantized LeNet-5 and tiny_cnn compile for ``arm`` (plain NEON), ``arm:cortex-a53``
and ``arm:cortex-a76`` (``sdot``), and give the host int8 build's outputs in the emulated aarch64
runtime on qemu's model of the target's core; LLVM's aborts are TargetErrors; the emulated CPU is
pinned (a ``sdot`` build on a Cortex-A53 dies with SIGILL, as it would on the board).

Runs under emulation skip where ``scripts/setup_aarch64.sh`` has not been run (as in test_arm.py).
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")

import mcopt.targets.arm.builder  # noqa: E402,F401  (registers the arm targets)
from mcopt.api import load  # noqa: E402
from mcopt.errors import TargetError  # noqa: E402
from mcopt.testing import zoo  # noqa: E402

pytestmark = pytest.mark.tvm

BUILDS = [
    ("lenet5", "arm"),
    ("lenet5", "arm:cortex-a76"),
    ("tiny_cnn", "arm"),
    ("tiny_cnn", "arm:cortex-a53"),
    ("tiny_cnn", "arm:cortex-a76"),
]
#: the CPU models of qemu-user 7.2 (Debian bookworm)
QEMU_72 = (
    "a64fx", "cortex-a35", "cortex-a53", "cortex-a57", "cortex-a72", "cortex-a76", "max",
    "neoverse-n1",
)  # fmt: skip


def _int8(source: Any) -> Any:
    from mcopt.inputs import random_feeds
    from mcopt.pass_manager import PassContext, PassManager

    g = load(source)
    feeds = random_feeds(g, n=4, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        g, _ = PassManager(["cleanup", "quantize-int8"]).run(g, ctx=PassContext(calib=feeds))
    return g


@pytest.fixture(scope="module")
def models() -> dict[str, tuple[Any, np.ndarray, list[np.ndarray]]]:
    """name -> (int8 graph, input, outputs of the host (x86) int8 build)."""
    from mcopt.targets import build

    out = {}
    for name, src in (("lenet5", zoo.lenet5_path()), ("tiny_cnn", zoo.tiny_cnn(seed=0))):
        g = _int8(src)
        assert {"qconv2d", "qdense", "quantize"} <= {n.op for n in g.nodes}
        x = np.random.default_rng(1).standard_normal(g.inputs[0].shape).astype(np.float32)
        out[name] = (g, x, build(g, "cpu").run(x))
    return out


@pytest.fixture(scope="module")
def arm_builds(models: dict[str, Any]) -> dict[tuple[str, str], Any]:
    from mcopt.targets.arm.builder import build_arm

    return {(m, t): build_arm(models[m][0], t) for m, t in BUILDS}


def _intrinsics(model: Any) -> set[str]:
    import re

    from mcopt.targets.arm.codegen_guard import llvm_modules

    names: set[str] = set()
    for lm in llvm_modules(model.executable.mod):
        names |= set(re.findall(r"declare [^@\n]*@(llvm\.[\w.]+)\(", str(lm.inspect_source("ll"))))
    return names


@pytest.mark.parametrize("model,target", BUILDS)
def test_int8_compiles_for_arm(model: str, target: str, arm_builds: dict[Any, Any]) -> None:
    intrinsics = _intrinsics(arm_builds[(model, target)])
    assert not any(i.startswith("llvm.x86.") for i in intrinsics), intrinsics
    uses_sdot = any(i.startswith("llvm.aarch64.neon.sdot") for i in intrinsics)
    assert uses_sdot == (target == "arm:cortex-a76")  # +dotprod only on the A76


def test_int8_matches_the_host_under_emulation(
    models: dict[str, Any], arm_builds: dict[Any, Any]
) -> None:
    """Every build runs on qemu's model of its core (one emulated process per core) and gives
    the host int8 build's outputs (integer arithmetic: equal up to float rounding)."""
    from mcopt.targets.arm.emulate import run_emulated_many, unavailable_reason

    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    groups: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for key, m in arm_builds.items():
        groups[m.qemu_cpu].append(key)
    assert set(groups) == {"cortex-a53", "cortex-a76"}  # generic NEON pins the A53 model
    for cpu, keys in groups.items():
        jobs = [(arm_builds[k].library_path(), [models[k[0]][1]]) for k in keys]
        for key, outs in zip(keys, run_emulated_many(jobs, cpu=cpu)):
            host = models[key[0]][2]
            assert len(outs) == len(host)
            for o, h in zip(outs, host):
                assert o.shape == h.shape and o.dtype == h.dtype
                err = float(np.abs(o.astype(np.float64) - h).max())
                assert err <= 1e-5 * max(1.0, float(np.abs(h).max())), (key, cpu, err)


def test_dotprod_build_dies_on_a53_model_as_on_the_device(arm_builds: dict[Any, Any]) -> None:
    """Why the CPU is pinned: the sdot library on qemu's Cortex-A53 model is an illegal
    instruction (with qemu's default ``max`` CPU it would pass)."""
    from mcopt.targets.arm.emulate import run_emulated, unavailable_reason

    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    m = arm_builds[("tiny_cnn", "arm:cortex-a76")]
    x = np.zeros(m.input_specs[0][1], np.float32)
    with pytest.raises(TargetError, match="instruction the emulated cortex-a53 does not have") as e:
        run_emulated(m.library_path(), [x], cpu="cortex-a53")
    assert "\n" not in str(e.value)


def test_qemu_command_line_pins_the_core(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """ArmCompiledModel.run starts ``qemu-aarch64-static -L SYSROOT -cpu <core> ...`` and sets
    ``QEMU_CPU`` (qemu is not needed: the command is captured)."""
    from mcopt.targets.arm import emulate
    from mcopt.targets.arm.builder import ArmCompiledModel

    seen: list[tuple[list[str], dict[str, str]]] = []

    class Captured(Exception):
        pass

    def fake_run(cmd: list[str], **kw: Any) -> Any:
        seen.append((cmd, kw["env"]))
        raise Captured

    wrapper = tmp_path / "python3"
    monkeypatch.setattr(emulate, "_require", lambda: wrapper)
    monkeypatch.setattr(emulate.shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(emulate, "qemu_cpus", lambda qemu=emulate.QEMU: QEMU_72)
    monkeypatch.setattr(emulate.subprocess, "run", fake_run)
    monkeypatch.delenv("MCOPT_AARCH64_PYTHON", raising=False)
    lib = tmp_path / "model.so"
    lib.write_bytes(b"\x7fELF")
    expected = {
        "arm:cortex-a53": "cortex-a53",
        "arm": "cortex-a53",  # generic Armv8.0 + NEON: the least-featured model
        "arm:cortex-a72": "cortex-a72",
        "arm:cortex-a76": "cortex-a76",
        "arm:cortex-a55": "cortex-a76",  # not in qemu 7.2: a model with dotprod + fp16
        "arm:neoverse-n1": "neoverse-n1",
        "arm:neoverse-v1": "max",  # SVE + i8mm: no smaller model in qemu 7.2
    }
    for target, cpu in expected.items():
        m = ArmCompiledModel(None, target, [("x", (1,), "float32")])
        m._lib_path = lib
        with pytest.raises(Captured):
            m.run(np.zeros(1, np.float32))
        cmd, env = seen[-1]
        root = emulate.aarch64_root()
        assert cmd[:6] == [
            "/usr/bin/qemu-aarch64-static",
            "-L",
            str(root / "sysroot"),
            "-cpu",
            cpu,
            "-0",
        ]
        assert cmd[6] == str(wrapper) and env["QEMU_CPU"] == cpu, (target, cmd[:8])


def test_qemu_cpu_choice() -> None:
    from mcopt.targets.arm.emulate import qemu_cpu_for

    newer = (*QEMU_72, "cortex-a55", "neoverse-v1", "neoverse-n2")
    assert qemu_cpu_for("cortex-a55", ["+neon", "+dotprod", "+fullfp16"], QEMU_72) == "cortex-a76"
    assert qemu_cpu_for("cortex-a55", ["+neon", "+dotprod", "+fullfp16"], newer) == "cortex-a55"
    assert qemu_cpu_for("neoverse-v1", ["+neon", "+sve", "+i8mm"], QEMU_72) == "max"
    assert qemu_cpu_for("neoverse-v1", ["+neon", "+sve", "+i8mm"], newer) == "neoverse-v1"
    assert qemu_cpu_for("my-core", ["+neon"], QEMU_72) == "cortex-a53"


def test_llvm_abort_is_a_one_line_target_error(
    models: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The old bug on purpose: int8 lowered for the host (x86 dot-product intrinsics) and built for
    aarch64. The IR check refuses it before code generation; with the check bypassed, LLVM's
    abort happens in the code-generation child and this process gets a TargetError."""
    from mcopt.targets.arm.builder import ArmCompiledModel
    from mcopt.targets.cpu.kernels.int8_intrin import choose_isa
    from mcopt.targets.cpu.kernels.target_info import host_target
    from mcopt.targets.registry import get_target
    from mcopt.targets.relax import builder
    from mcopt.targets.relax.lower import lower

    if choose_isa(host_target(), True) is None:
        pytest.skip("this host has no x86 dot-product instruction to misuse")
    g = models["lenet5"][0]
    spec = get_target("arm")
    with pytest.raises(TargetError, match=r"calls the x86 intrinsic llvm\.x86\.\S+ in qconv2d"):
        builder.compile_module(lower(g, target=host_target()), spec)
    monkeypatch.setattr(builder, "_is_cross", lambda target: False)
    ex = builder.compile_module(lower(g, target=host_target()), spec)
    with pytest.raises(TargetError, match=r"code generation aborted \(LLVM ERROR: .*split") as e:
        ArmCompiledModel(ex, "arm").generate_code()
    assert "\n" not in str(e.value)
