"""A missing C/C++ compiler or cross toolchain is a one-line TargetError naming the program and the
Debian package, raised before building (simulated: PATH without compilers, or a patched
``shutil.which``; no compiler is removed from the machine)."""

from __future__ import annotations

import shutil
import stat
from pathlib import Path

import numpy as np
import pytest

from mcopt.api import load
from mcopt.errors import TargetError
from mcopt.targets import get_target
from mcopt.targets.toolchain import HOST_CXX, find_compiler, require_compiler, require_toolchain


@pytest.fixture
def no_compilers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """PATH holds only an empty directory, and $CXX / $CC are unset."""
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.delenv("CC", raising=False)
    return empty


def _fake_program(directory: Path, name: str) -> Path:
    p = directory / name
    p.write_text("#!/bin/sh\nexit 0\n")
    p.chmod(p.stat().st_mode | stat.S_IXUSR)
    return p


def _one_line(e: pytest.ExceptionInfo[TargetError]) -> str:
    msg = str(e.value)
    assert "\n" not in msg and "NoneType" not in msg, msg
    return msg


def test_missing_host_compiler(no_compilers: Path) -> None:
    assert find_compiler(HOST_CXX) is None
    with pytest.raises(TargetError) as ei:
        require_toolchain(get_target("cpu"))
    msg = _one_line(ei)
    assert "target 'cpu'" in msg and "g++" in msg and "apt-get install g++" in msg
    assert "build-essential" in msg


def test_host_compiler_search_follows_tvm(
    no_compilers: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found the way tvm.support.cc.get_cc finds it: $CXX, $CC, then g++, gcc, clang++, ... ."""
    clang = _fake_program(no_compilers, "clang")
    assert find_compiler(HOST_CXX) == str(clang)
    gxx = _fake_program(no_compilers, "g++")
    assert find_compiler(HOST_CXX) == str(gxx)
    assert require_toolchain(get_target("cpu")) == str(gxx)
    try:
        from tvm.support import cc
    except ImportError:
        cc = None
    if cc is not None:
        assert cc.get_cc() == str(gxx)  # the very program TVM will run
    monkeypatch.setenv("CC", "clang")
    assert find_compiler(HOST_CXX) == str(clang)


def test_compiler_variable_names_a_missing_program(
    no_compilers: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_program(no_compilers, "g++")  # not used: TVM takes $CXX first
    monkeypatch.setenv("CXX", "/opt/nowhere/g++-99")
    with pytest.raises(TargetError) as ei:
        require_toolchain(get_target("cpu"))
    msg = _one_line(ei)
    assert "$CXX is '/opt/nowhere/g++-99'" in msg and "apt-get install g++" in msg


def test_missing_cross_compiler(monkeypatch: pytest.MonkeyPatch) -> None:
    from mcopt.targets.arm.builder import CROSS_CXX

    real_which = shutil.which
    monkeypatch.setattr(
        shutil, "which", lambda name, *a, **k: None if name == CROSS_CXX else real_which(name)
    )
    for name in ("arm", "arm:cortex-a76"):
        with pytest.raises(TargetError) as ei:
            require_toolchain(get_target(name))
        msg = _one_line(ei)
        assert f"target '{name}'" in msg and "aarch64-linux-gnu-g++" in msg
        assert "apt-get install g++-aarch64-linux-gnu" in msg


def test_missing_c_compiler_for_fpga(no_compilers: Path) -> None:
    with pytest.raises(TargetError) as ei:
        require_toolchain(get_target("fpga"))
    msg = _one_line(ei)
    assert "C compiler" in msg and "gcc" in msg and "apt-get install gcc" in msg


def test_no_toolchain_needed() -> None:
    assert require_compiler("none", "anything") == ""


def test_build_checks_before_compiling(no_compilers: Path) -> None:
    """mcopt.targets.build (what optimize() calls) refuses before lowering or compiling."""
    from mcopt import targets
    from mcopt.testing import zoo

    graph = load(zoo.tiny_cnn())
    for name, program in (("cpu", "g++"), ("arm", "aarch64-linux-gnu-g++"), ("fpga", "gcc")):
        with pytest.raises(TargetError) as ei:
            targets.build(graph, name)
        assert program in _one_line(ei)


@pytest.mark.tvm
def test_export_without_compiler_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A model built while a compiler was there, exported after it is gone (TVM would otherwise
    fail with "expected str, bytes or os.PathLike object, not NoneType")."""
    pytest.importorskip("tvm")
    from mcopt.targets.relax.builder import build
    from mcopt.testing import zoo

    graph = load(zoo.tiny_cnn())
    compiled = build(graph, "cpu")
    x = np.zeros(graph.inputs[0].shape, np.float32)
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.delenv("CC", raising=False)
    with pytest.raises(TargetError) as ei:
        compiled.export_library(tmp_path / "out" / "model.so")
    assert "apt-get install g++" in _one_line(ei)
    assert not (tmp_path / "out" / "model.so").exists()
    assert compiled.run(x)[0].shape[0] == 1  # the in-process module still runs
