"""The hand-written NEON fp32 blocked conv (:mod:`mcopt.targets.cpu.kernels.conv2d_neon`): against
a float64 numpy conv on qemu's Neoverse-N1 model (all cases in one emulated process; skipped where
``scripts/setup_aarch64.sh`` has not been run), its tile rule, and the dispatch (ARM only).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")

from mcopt.targets.cpu.kernels import layout  # noqa: E402
from mcopt.targets.cpu.kernels.conv2d import conv2d_nchwc, uses_neon_kernel  # noqa: E402
from mcopt.targets.cpu.kernels.epilogue import Epilogue  # noqa: E402
from mcopt.targets.cpu.kernels.params import (  # noqa: E402
    NEON_MAX_ACCUMULATORS,
    choose_conv_params,
    choose_neon_tile,
)

pytestmark = pytest.mark.tvm

ARM = {
    "kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon", "+dotprod"],
    "mcpu": "neoverse-n1", "num-cores": 4,
}  # fmt: skip
#: id -> (ic, oc, hw, k, stride, pad, epilogue, tile (reg_n, reg_c) or None)
CASES = {
    "3x3-row": (16, 16, 14, 3, 1, 1, Epilogue(True, True, "relu"), (7, 2)),
    "3x3-flat": (16, 32, 7, 3, 1, 1, Epilogue(True, False, "relu6"), None),
    "3x3-rounded": (8, 16, 11, 3, 1, 1, Epilogue(True, False, None), (5, 4)),
    "3x3-stride2": (8, 16, 11, 3, 2, 1, Epilogue(False, True, "clip", -1.0, 2.0), None),
    "1x1-flat": (32, 64, 13, 1, 1, 0, Epilogue(True, False, "relu"), None),
    "1x1-rounded-copy": (16, 8, 9, 1, 1, 0, Epilogue(True, True, "hard_swish"), (4, 2)),
    "1x1-stride2": (16, 32, 15, 1, 2, 0, Epilogue(True, False, None), None),
    "5x5-asym": (4, 8, 10, 5, 1, 2, Epilogue(True, False, "relu"), (3, 1)),
}


def _ref(x, w, b, res, stride, pad, ep):
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    k = w.shape[2]
    oh = (xp.shape[2] - k) // stride + 1
    ow = (xp.shape[3] - k) // stride + 1
    acc = np.zeros((x.shape[0], w.shape[0], oh, ow))
    for r in range(k):
        for s in range(k):
            win = xp[:, :, r : r + stride * oh : stride, s : s + stride * ow : stride]
            acc += np.einsum("nchw,oc->nohw", win, w[:, :, r, s].astype(np.float64))
    return ep.apply_numpy(acc, b.reshape(1, -1, 1, 1) if b is not None else None, res)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    from mcopt.targets.arm import emulate

    reason = emulate.unavailable_reason()
    if reason:
        pytest.skip(reason)
    target = tvm.target.Target(ARM)
    kernels, refs = [], {}
    for name, (ic, oc, hw, k, st, pad, ep, tile) in CASES.items():
        rng = np.random.default_rng(ic + 3 * oc + hw + k)
        ds, ws = (1, ic, hw, hw), (oc, ic, k, k)
        params = choose_conv_params(ds, ws, st, pad, 1, target)
        if tile is not None:
            params = dataclasses.replace(params, reg_n=tile[0], reg_c=tile[1], flat=False)
        assert uses_neon_kernel(target, params, "float32", False)
        func = conv2d_nchwc(ds, ws, st, pad, 1, target, params, ep)
        x = rng.standard_normal(ds).astype(np.float32)
        w = rng.standard_normal(ws).astype(np.float32)
        b = rng.standard_normal(oc).astype(np.float32) if ep.bias else None
        oh = (hw + 2 * pad - k) // st + 1
        res = rng.standard_normal((1, oc, oh, oh)).astype(np.float32) if ep.residual else None
        args = [layout.pack_nchwc(x, 4), layout.pack_conv_weight(w, 4, params.oc_kbn)]
        if b is not None:
            args.append(layout.pack_bias(b, 4))
        if res is not None:
            args.append(layout.pack_nchwc(res, 4))
        args.append(np.zeros((1, oc // 4, oh, oh, 4), np.float32))
        kernels.append((name, func, args))
        refs[name] = _ref(x, w, b, res, st, pad, ep)
    outs = emulate.run_kernels_emulated(kernels, target, tmp_path_factory.mktemp("conv_neon"))
    return {name: (layout.unpack_nchwc(outs[name]), refs[name]) for name in CASES}


@pytest.mark.parametrize("case", list(CASES))
def test_neon_conv_under_emulation(results, case):
    got, ref = results[case]
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)


def test_neon_tile_rule():
    for oh, ow, occ, steps, padded in [(56, 56, 16, 144, True), (7, 7, 512, 128, False),
                                       (13, 13, 16, 128, False), (28, 28, 32, 288, True)]:  # fmt: skip
        rn, rc, flat = choose_neon_tile(1, oh, ow, occ, steps, 4, padded, 4)
        assert occ % rc == 0 and rn * rc <= NEON_MAX_ACCUMULATORS and rn * rc + rn + 2 <= 32
        assert not flat or oh * ow <= 1024


def test_dispatch_is_arm_only():
    arm = tvm.target.Target(ARM)
    x86 = tvm.target.Target({"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "skylake"})
    ds, ws = (1, 16, 14, 14), (16, 16, 3, 3)
    pa = choose_conv_params(ds, ws, 1, 1, 1, arm)
    px = choose_conv_params(ds, ws, 1, 1, 1, x86)
    assert uses_neon_kernel(arm, pa, "float32", False)
    assert not uses_neon_kernel(x86, px, "float32", False)
    assert not uses_neon_kernel(arm, pa, "float32", True)  # the NCHW image: the TE template
