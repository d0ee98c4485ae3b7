"""Winograd F(m x m, 3 x 3) on the blocked ``NCHW[bn]c`` layout with the conv epilogue fused, so
that the planned CPU build can run a 3x3 stride-1 conv as Winograd without leaving the blocked
layout (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", CVPR 2016; the NCHWc
organisation follows NNPACK / TVM's x86 Winograd: vectors over channels, not over tiles).

For tile ``p = (n, ty, tx)`` (``P = N * TH * TW``), ``alpha = m + 2``, ``e = xi * alpha + nu``:

1. ``xpad``: the zero-padded input, still blocked (a parallel, vectorized copy);
2. input transform, vectorized over the ``bn`` channels of a block:
   ``V[e, p, c] = sum_{i,j} BT[xi, i] BT[nu, j] xpad[n, c // bn, ty*m + i, tx*m + j, c % bn]``;
3. alpha^2 GEMMs ``M[e, p, o] = sum_c V[e, p, c] U[e, c, o]`` with the conv template's register
   tile: ``rp`` tile positions (broadcasts of V) x ``rv`` vectors of ``bn`` output channels (loads
   of U, packed ``(alpha^2, O / (rv bn), C, rv bn)``), ``rp * rv <= 12`` accumulators;
   ``parallel(e, o_outer)`` / ``p_outer`` / ``c`` / ``rp`` / ``rv`` / lanes;
4. output transform + epilogue, vectorized over the output block:
   ``out[n, o // bn, ty*m + r, tx*m + s, o % bn] = act(sum AT[r, xi] AT[s, nu] M[e, p, o] + bias
   (+ residual))``, stores past ``OH x OW`` (when ``m`` does not divide it) skipped.

Multiplies per output: ``alpha^2 / m^2`` instead of 9 (2.25x fewer for m = 2, 4x for m = 4); the
transforms are additions and constant scalings. Lossless up to float rounding (F(4x4) rounds
more: its transform entries are larger). The transform sums are generated in Python from the
numpy matrices of :mod:`mcopt.ops.winograd` with only their nonzero terms.

Which convs use it: :func:`choose_tile` compares, per layer shape and target, the direct conv
template with F(2x2) and F(4x4) (each with the same epilogue and layouts, measured once per machine
and cached in a JSON table), and takes Winograd only where it is faster.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mcopt.ops.winograd import TRANSFORMS, winograd_weight
from mcopt.targets.cpu.kernels.epilogue import Epilogue
from mcopt.targets.cpu.kernels.timing import cached_row, time_kernels
from mcopt.targets.fast_math import gelu_lines, silu_lines


# --- TVMScript text of the transforms (only their nonzero terms) ------------------------------
def _terms(mat: np.ndarray, row: int) -> list[tuple[int, float]]:
    return [(int(j), float(v)) for j, v in enumerate(mat[row]) if v != 0.0]


def _lin(pairs: list[tuple[float, str]]) -> str:
    """TVMScript text of ``sum coef * value`` (+-1 coefficients as add / subtract)."""
    out = ""
    for coef, val in pairs:
        if coef == 1.0:
            term, sign = val, "+"
        elif coef == -1.0:
            term, sign = val, "-"
        elif coef < 0:
            term, sign = f"T.float32({-coef!r}) * {val}", "-"
        else:
            term, sign = f"T.float32({coef!r}) * {val}", "+"
        out = (f"-{term}" if sign == "-" else term) if not out else f"{out} {sign} {term}"
    return f"({out})" if out else "T.float32(0.0)"


def _vec_width(n: int, lanes: int) -> int:
    """The largest of lanes, lanes/2, ..., 2 dividing ``n`` (1 = no vectorization)."""
    v = lanes
    while v > 1 and n % v:
        v //= 2
    return v


def epilogue_text(
    val: str, epilogue: Epilogue, bias: str, residual: str = "", slope: str = ""
) -> str:
    """TVMScript text of ``act(val + bias (+ residual))`` for ``epilogue`` (``bias`` /
    ``residual`` / ``slope``: the indexed buffer loads)."""
    lo, hi = epilogue.bounds()
    if epilogue.bias:
        val = f"{val} + {bias}"
    if epilogue.residual:
        val = f"{val} + {residual}"
    if epilogue.activation in ("silu", "gelu"):  # the caller binds silu_lines / gelu_lines
        return val
    if epilogue.activation == "prelu":  # one slope per output channel
        return f"T.Select(({val}) > T.float32(0.0), {val}, ({val}) * {slope})"
    if epilogue.activation == "hard_swish":
        return f"({val}) * T.min(T.max(({val}) + T.float32(3.0), T.float32(0.0)), T.float32(6.0)) * T.float32({1 / 6!r})"
    if epilogue.activation == "hard_sigmoid":
        a, b = float(epilogue.clip_min), float(epilogue.clip_max)
        return f"T.min(T.max(({val}) * T.float32({a!r}) + T.float32({b!r}), T.float32(0.0)), T.float32(1.0))"
    if epilogue.activation == "leaky_relu":
        a, floor = float(epilogue.clip_min), float(epilogue.clip_max)
        out = (
            f"T.max({val}, ({val}) * T.float32({a!r}))"
            if 0.0 <= a <= 1.0
            else f"T.Select(({val}) > T.float32(0.0), {val}, ({val}) * T.float32({a!r}))"
        )
        return f"T.max({out}, T.float32({floor!r}))" if math.isfinite(floor) else out
    if lo is not None:
        val = f"T.max({val}, T.float32({float(lo)!r}))"
    if hi is not None:
        val = f"T.min({val}, T.float32({float(hi)!r}))"
    return val


def scratch_tasks(name: str, tasks: int, rows: int, lanes: int, var: str = "t") -> list[str]:
    """TVMScript lines opening ``for var in T.parallel(tasks)`` with a per-task scratch buffer
    ``name`` of ``(rows, lanes)`` floats (a slice of one ``NAME`` allocation: the transforms'
    intermediate pass, written and read inside one task)."""
    big = name.upper()
    return [
        f'    {big} = T.alloc_buffer(({tasks}, {rows}, {lanes}), "float32")',
        f"    for {var} in T.parallel({tasks}):",
        f'        {name} = T.decl_buffer(({rows}, {lanes}), "float32", data={big}.data, '
        f"elem_offset={var} * {rows * lanes})",
    ]


def separable(
    mat: np.ndarray, src: Any, a: int, tmp: str
) -> tuple[list[tuple[int, str]], list[tuple[int, int, str]]]:
    """The two passes of the separable transform ``Y = mat D mat^T`` (D is ``a x a``, read through
    ``src(i, j)``) as TVMScript expressions with only the nonzero terms: the first pass
    ``[(r * a + j, expr of tmp[r * a + j, l])]`` with ``tmp[r, j] = sum_i mat[r, i] D[i, j]``, the
    second ``[(r, s, expr of Y[r, s])]`` with ``Y[r, s] = sum_j mat[s, j] tmp[r, j]`` (a scratch
    buffer, not lets: TVM's vectorizer mis-handles let-bound vectors)."""
    rows = mat.shape[0]
    first = [
        (r * a + j, _lin([(ci, src(i, j)) for i, ci in _terms(mat, r)]))
        for r in range(rows)
        for j in range(a)
    ]
    second = [
        (r, s, _lin([(cj, f"{tmp}[{r * a + j}, l]") for j, cj in _terms(mat, s)]))
        for r in range(rows)
        for s in range(rows)
    ]
    return first, second


#: (rp, rv) register tiles of the GEMM: rp tile positions x rv vectors of output channels. At
#: most 12 accumulators + rv weight vectors + a broadcast in AVX2's 16 registers: 3 x 4 (17) made
#: LLVM spill accumulators to the stack (F(2x2) 64@56: 1.63 ms with 3 x 4, 0.98 ms with 6 x 2)
_TILES = ((6, 2), (5, 2), (4, 2), (2, 4), (3, 3), (3, 2), (8, 1), (6, 1), (2, 2), (4, 1), (1, 4))
#: convs with fewer MACs are never considered (their whole run is microseconds); SqueezeNet's
#: 48 -> 192 at 13x13 (14 M MACs, one znver5 thread) ran 129 us direct, 77 us as F(2x2)
MIN_WINOGRAD_MACS = 5_000_000
#: Winograd is taken when it is at least this much faster than the direct template
MIN_GAIN = 1.05
#: version of the measurement table's keys (bump when the kernels change materially)
TABLE_VERSION = "nchwc5"


@dataclass(frozen=True)
class WinogradNCHWcPlan:
    m: int
    alpha: int
    bn: int
    oh: int
    ow: int
    th: int
    tw: int
    p: int
    pp: int
    rp: int
    rv: int


def plan(data_shape: Sequence[int], out_channels: int, m: int, pads: Sequence[int], bn: int):  # type: ignore[no-untyped-def]
    """Tile counts and the GEMM register tile for NCHW ``data_shape`` -> ``out_channels``."""
    n, c, h, w = (int(d) for d in data_shape)
    o = int(out_channels)
    if c % bn or o % bn:
        raise ValueError(f"channels {c}->{o} do not divide into blocks of {bn}")
    pt, pl, pb, pr = (int(p) for p in pads)
    oh, ow = h + pt + pb - 2, w + pl + pr - 2
    th, tw = -(-oh // m), -(-ow // m)
    p = n * th * tw
    best = None
    for rp, rv in _TILES:
        if (o // bn) % rv:
            continue
        pp = -(-p // rp) * rp
        score = rp * rv / (rp + rv) * p / pp
        if best is None or score > best[0] + 1e-9:
            best = (score, rp, rv, pp)
    assert best is not None
    _, rp, rv, pp = best
    return WinogradNCHWcPlan(m, m + 2, bn, oh, ow, th, tw, p, pp, rp, rv)


def pack_weight(w: np.ndarray, m: int, rv: int, bn: int) -> np.ndarray:
    """OIHW 3x3 ``w`` -> U packed ``(alpha^2, O / (rv bn), C, rv bn)``."""
    u = winograd_weight(np.asarray(w, np.float64), m)  # (a, a, C, O)
    a, _, c, o = u.shape
    vb = rv * bn
    packed = u.reshape(a * a, c, o // vb, vb).transpose(0, 2, 1, 3)
    return np.ascontiguousarray(packed, dtype=np.float32)


def _drop(_line: str) -> None:
    """Where a stage is left out (:func:`script`'s ``stages``)."""


def script(
    data_shape: Sequence[int],
    out_channels: int,
    pl_: WinogradNCHWcPlan,
    pads: Sequence[int],
    epilogue: Epilogue,
    stages: str = "pad,in,gemm,out",
) -> str:
    """TVMScript source of the kernel (see the module docstring). ``stages`` leaves out the
    stages not named (for profiling the stages; the result is then not the conv)."""
    keep = set(stages.split(","))
    bt, _, at = TRANSFORMS[pl_.m]
    m, a, bn = pl_.m, pl_.alpha, pl_.bn
    n, c, h, w = (int(d) for d in data_shape)
    o = int(out_channels)
    cb, ob = c // bn, o // bn
    pt, pl = int(pads[0]), int(pads[1])
    th, tw, p_real, pp, rp, rv = pl_.th, pl_.tw, pl_.p, pl_.pp, pl_.rp, pl_.rv
    oh, ow = pl_.oh, pl_.ow
    hp, wp = th * m + 2, tw * m + 2
    a2, nob = a * a, ob // rv
    lo, hi = epilogue.bounds()
    L: list[str] = []
    add = L.append
    add("# from tvm.script import tirx as T")
    add("@T.prim_func")
    args = [
        f'x: T.Buffer(({n}, {cb}, {h}, {w}, {bn}), "float32")',
        f'u: T.Buffer(({a2}, {nob}, {c}, {rv * bn}), "float32")',
    ]
    if epilogue.bias:
        args.append(f'bias: T.Buffer(({ob}, {bn}), "float32")')
    if epilogue.residual:
        args.append(f'res: T.Buffer(({n}, {ob}, {oh}, {ow}, {bn}), "float32")')
    if epilogue.activation == "prelu":
        args.append(f'slope: T.Buffer(({ob}, {bn}), "float32")')
    args.append(f'out: T.Buffer(({n}, {ob}, {oh}, {ow}, {bn}), "float32")')
    add(f"def main({', '.join(args)}):")
    add('    T.func_attr({"tirx.noalias": True})')
    add(f'    xpad = T.alloc_buffer(({n}, {cb}, {hp}, {wp}, {bn}), "float32")')
    add(f'    V = T.alloc_buffer(({a2}, {pp}, {c}), "float32")')
    add(f'    M = T.alloc_buffer(({a2}, {pp}, {o}), "float32")')
    # 1. zero padding, blocked
    add = L.append if "pad" in keep else _drop
    # (parallel over rows, not channel blocks: one block of 16 channels is one task)
    add(f"    for t in T.parallel({n * cb * hp}):")
    add(f"        for xx in range({wp}):")
    add(f"            for l in T.vectorized({bn}):")
    nn, cc, yy = f"t // {cb * hp}", f"t // {hp} % {cb}", f"t % {hp}"
    add(
        f"                xpad[{nn}, {cc}, {yy}, xx, l] = T.if_then_else("
        f"{pt} <= {yy} and {yy} < {h + pt} and {pl} <= xx and xx < {w + pl}, "
        f"x[{nn}, {cc}, {yy} - {pt}, xx - {pl}, l], T.float32(0.0))"
    )
    add = L.append if "in" in keep else _drop
    # 2. input transform per (n, tile row), all channel blocks of a tile in turn (a task writes
    # whole rows V[e, p, :]: tasks split by channel block would share V's cache lines), vectorized
    # over the channel block
    for line in scratch_tasks("ti", n * th, a2, bn, "t"):
        add(line)
    add(f"        for tx, cc in T.grid({tw}, {cb}):")
    add(f"            for l in T.vectorized({bn}):")
    nn, ty = f"(t // {th})", f"(t % {th})"
    pidx = f"{nn} * {th * tw} + {ty} * {tw} + tx"

    def d(i: int, j: int) -> str:
        return f"xpad[{nn}, cc, {ty} * {m} + {i}, tx * {m} + {j}, l]"

    first, second = separable(bt, d, a, "ti")
    for k, val in first:
        add(f"                ti[{k}, l] = {val}")
    for xi, nu, val in second:
        add(f"                V[{xi * a + nu}, {pidx}, cc * {bn} + l] = {val}")
    if pp > p_real:
        add(f"    for e, pz, rc in T.grid({a2}, {pp - p_real}, {c}):")
        add(f"        V[e, {p_real} + pz, rc] = T.float32(0.0)")
    add = L.append if "gemm" in keep else _drop
    # 3. the alpha^2 GEMMs, register tile rp positions x rv output vectors
    mo = f"(t % {nob} * {rv} + vi) * {bn} + l"
    add(f"    for t in T.parallel({a2 * nob}):")
    add(f"        for po in range({pp // rp}):")
    add(f"            for pi in T.unroll({rp}):")
    add(f"                for vi in T.unroll({rv}):")
    add(f"                    for l in T.vectorized({bn}):")
    add(f"                        M[t // {nob}, po * {rp} + pi, {mo}] = T.float32(0.0)")
    add(f"            for rc in range({c}):")
    add(f"                for pi in T.unroll({rp}):")
    add(f"                    for vi in T.unroll({rv}):")
    add(f"                        for l in T.vectorized({bn}):")
    add(
        f"                            M[t // {nob}, po * {rp} + pi, {mo}] = "
        f"M[t // {nob}, po * {rp} + pi, {mo}] + V[t // {nob}, po * {rp} + pi, rc] * "
        f"u[t // {nob}, t % {nob}, rc, vi * {bn} + l]"
    )
    add = L.append if "out" in keep else _drop
    # 4. output transform + epilogue per (n, o block, tile row), vectorized over the block
    extra = 4 if epilogue.activation in ("silu", "gelu") else 0  # silu/gelu_lines' scratch rows
    for line in scratch_tasks("to", n * ob * th, m * a + extra, bn, "t"):
        add(line)
    add(f"        for tx in range({tw}):")
    add(f"            for l in T.vectorized({bn}):")
    nn, oc, ty = f"(t // {ob * th})", f"(t // {th} % {ob})", f"(t % {th})"
    pidx = f"{nn} * {th * tw} + {ty} * {tw} + tx"

    def mv(xi: int, nu: int) -> str:
        return f"M[{xi * a + nu}, {pidx}, {oc} * {bn} + l]"

    first, second = separable(at, mv, a, "to")
    for k, val in first:
        add(f"                to[{k}, l] = {val}")
    for r, s, val in second:
        y, x_ = f"{ty} * {m} + {r}", f"tx * {m} + {s}"
        val = epilogue_text(
            val, epilogue, f"bias[{oc}, l]", f"res[{nn}, {oc}, {y}, {x_}, l]", f"slope[{oc}, l]"
        )
        conds = []
        if oh % m and r >= oh % m:
            conds.append(f"{y} < {oh}")
        if ow % m and s >= ow % m:
            conds.append(f"{x_} < {ow}")
        indent = " " * (20 if conds else 16)
        steps: list[str] = []
        if epilogue.activation in ("silu", "gelu"):  # steps through 4 scratch rows of `to`
            lines = silu_lines if epilogue.activation == "silu" else gelu_lines
            steps, val = lines(val, lambda i: f"to[{m * a + i}, l]")
        if conds:
            add(f"                if {' and '.join(conds)}:")
        for line in steps:
            add(indent + line)
        add(f"{indent}out[{nn}, {oc}, {y}, {x_}, l] = {val}")
    return "\n".join(L) + "\n"


def winograd_conv2d_nchwc(
    data_shape: Sequence[int],
    out_channels: int,
    m: int,
    pads: Sequence[int],
    epilogue: Epilogue | None = None,
    bn: int = 8,
) -> tuple[Any, WinogradNCHWcPlan]:
    """A scheduled PrimFunc ``(x (N, C/bn, H, W, bn), u (alpha^2, O/(rv bn), C, rv bn),
    [bias (O/bn, bn)], [residual], out (N, O/bn, OH, OW, bn))`` and its plan (``data_shape`` is
    the logical NCHW shape; pack the weight with :func:`pack_weight` using ``plan.rv``)."""
    from mcopt.targets.cpu.kernels.tvmscript import parse

    if m not in TRANSFORMS:
        raise ValueError(f"winograd tile m must be one of {sorted(TRANSFORMS)}, got {m}")
    epilogue = epilogue or Epilogue(bias=True)
    pl_ = plan(data_shape, out_channels, m, pads, bn)
    func = parse(script(data_shape, out_channels, pl_, pads, epilogue))
    return func.with_attr("tirx.is_scheduled", True), pl_


def is_candidate(data_shape: Sequence[int], weight_shape: Sequence[int], strides: Sequence[int],
                 dilations: Sequence[int], bn: int) -> bool:  # fmt: skip
    """A 3x3, stride-1, undilated conv with both channel counts multiples of ``bn`` and enough
    MACs to be worth measuring."""
    n, c, h, w = (int(d) for d in data_shape)
    o, c2, kh, kw = (int(d) for d in weight_shape)
    if (kh, kw) != (3, 3) or tuple(strides) != (1, 1) or tuple(dilations) != (1, 1):
        return False
    if c != c2 or c % bn or o % bn:
        return False
    return n * o * c * 9 * h * w >= MIN_WINOGRAD_MACS


# --- choosing per layer by measurement ---------------------------------------------------------
def measure(
    data_shape: Sequence[int],
    out_channels: int,
    pads: Sequence[int],
    epilogue: Epilogue,
    target: Any = None,
    tiles: Sequence[int] = (2, 4),
    bn: int | None = None,
) -> dict[str, float]:
    """ms of the direct template and of F(m) for each ``m`` in ``tiles``, same layouts and
    epilogue, random data: ``{"direct": ms, "f2": ms, "f4": ms}``, timed in alternating rounds
    with the weights cold (:func:`.timing.time_kernels`): inside a model a layer's weights come
    from memory, and Winograd's are larger (``alpha^2 / 9`` times: 4x for F(4x4)), which decides
    the small planes (SqueezeNet's 64 -> 256 at 13x13, one znver5 thread: F(4x4) 100 us with warm
    weights, 188 us in the model, F(2x2) 133 us)."""
    from mcopt.targets.cpu.kernels import layout
    from mcopt.targets.cpu.kernels.conv2d import conv2d_nchwc
    from mcopt.targets.cpu.kernels.params import choose_conv_params
    from mcopt.targets.cpu.kernels.target_info import host_target

    target = target or host_target()
    bn = bn or _lanes(target)
    rng = np.random.default_rng(0)
    n, c, h, w = (int(d) for d in data_shape)
    o = int(out_channels)
    x = rng.standard_normal((n, c // bn, h, w, bn)).astype(np.float32)
    g = rng.standard_normal((o, c, 3, 3)).astype(np.float32)
    oh, ow = h + pads[0] + pads[2] - 2, w + pads[1] + pads[3] - 2
    extra = []
    if epilogue.bias:
        extra.append(np.zeros((o // bn, bn), np.float32))
    if epilogue.residual:
        extra.append(rng.standard_normal((n, o // bn, oh, ow, bn)).astype(np.float32))
    if epilogue.activation == "prelu":
        extra.append(np.full((o // bn, bn), 0.25, np.float32))
    out = np.zeros((n, o // bn, oh, ow, bn), np.float32)
    p = choose_conv_params((n, c, h, w), (o, c, 3, 3), 1, tuple(pads), 1, target)
    if p.ic_bn != bn or p.oc_bn != bn:
        raise ValueError(f"direct template blocks {p.ic_bn}/{p.oc_bn} differ from {bn}")
    f = conv2d_nchwc((n, c, h, w), (o, c, 3, 3), 1, tuple(pads), 1, target, p, epilogue)
    wp = layout.pack_conv_weight(g, bn, p.oc_kbn)
    kernels = {"direct": (f, [x, wp, *extra, out])}
    for m in tiles:
        f, pl_ = winograd_conv2d_nchwc((n, c, h, w), o, m, pads, epilogue, bn)
        kernels[f"f{m}"] = (f, [x, pack_weight(g, m, pl_.rv, bn), *extra, out])
    return time_kernels(kernels, target)


def table_path() -> Path:
    """The per-machine measurement cache (``MCOPT_WINOGRAD_TABLE`` overrides)."""
    env = os.environ.get("MCOPT_WINOGRAD_TABLE")
    if env:
        return Path(env)
    return Path.home() / ".cache" / "mcopt" / "winograd_nchwc.json"


def _key(target: Any, data_shape: Sequence[int], o: int, pads: Sequence[int], ep: Epilogue) -> str:
    from mcopt.targets.cpu.kernels.timing import target_key

    shape = "x".join(str(int(d)) for d in data_shape)
    tail = f"{'b' if ep.bias else ''}{'r' if ep.residual else ''}"
    return (
        f"{TABLE_VERSION}|{target_key(target)}|{shape}->{int(o)}|{','.join(map(str, pads))}|{tail}"
    )


def measurable_here(target: Any) -> bool:
    """Whether code for ``target`` runs in this process (llvm for this host's architecture)."""
    import platform

    if target is None:
        return True
    if str(target.kind.name) != "llvm":
        return False
    triple = str((target.attrs or {}).get("mtriple", "") or "")
    if not triple:
        return True
    arch = platform.machine().lower()
    same = {"x86_64": ("x86_64", "amd64"), "amd64": ("x86_64", "amd64")}.get(arch, (arch,))
    return triple.split("-")[0].lower() in same or (
        arch in ("aarch64", "arm64") and triple.startswith(("aarch64", "arm64"))
    )


def mode() -> str:
    """``MCOPT_WINOGRAD`` normalised: ``auto`` (default), ``off``, ``2`` or ``4``."""
    from mcopt.errors import OptionError

    how = os.environ.get("MCOPT_WINOGRAD", "auto").strip().lower() or "auto"
    if how in ("off", "0", "none", "false", "no"):
        return "off"
    if how not in ("auto", "2", "4"):
        raise OptionError(f"MCOPT_WINOGRAD={os.environ['MCOPT_WINOGRAD']!r}: use auto, off, 2 or 4")
    return how


def _lanes(target: Any) -> int:
    from mcopt.targets.cpu.kernels.target_info import cpu_info

    return cpu_info(target).lanes


def choose_tile(
    data_shape: Sequence[int],
    out_channels: int,
    pads: Sequence[int],
    epilogue: Epilogue,
    target: Any,
    bn: int | None = None,
) -> int | None:
    """``2`` / ``4`` for the Winograd tile to use, None for the direct template (``bn``: the
    channel block, default the target's fp32 SIMD lanes, as the planned build uses).

    ``MCOPT_WINOGRAD``: ``auto`` (default: measured, cached per machine in :func:`table_path`),
    ``off``, or ``2`` / ``4`` (forced for every candidate conv)."""
    how = mode()
    if how == "off":
        return None
    if how in ("2", "4"):
        return int(how)
    if not measurable_here(target):  # a cross target (arm): nothing to time it on here
        return None
    key = _key(target, data_shape, out_channels, pads, epilogue)
    row = cached_row(
        table_path(),
        key,
        ("direct", "f2", "f4"),
        lambda: measure(data_shape, out_channels, pads, epilogue, target, bn=bn or _lanes(target)),
    )
    best = min((2, 4), key=lambda mm: float(row[f"f{mm}"]))
    return best if float(row["direct"]) >= MIN_GAIN * float(row[f"f{best}"]) else None


def cached_measurement(
    table: str | os.PathLike[str] | None,
    data_shape: Sequence[int],
    out_channels: int,
    pads: Sequence[int],
    target: Any = None,
    tiles: Sequence[int] = (2, 4),
) -> dict[str, float]:
    """``{"direct": ms, "f2": ms, "f4": ms}`` of a 3x3 conv with a bias, channels padded to the
    target's block, from the same per-machine table (``table``, default :func:`table_path`) and
    the same kernels as the CPU build's own choice (:func:`choose_tile`): what the ``winograd``
    pass's ``only_if_faster`` reads."""
    from mcopt.targets.cpu.kernels.target_info import host_target

    target = target or host_target()
    bn = _lanes(target)
    key, shape, o = measurement_key(data_shape, out_channels, pads, target)
    return cached_row(
        table or table_path(),
        key,
        ("direct", *(f"f{m}" for m in tiles)),
        lambda: measure(shape, o, pads, Epilogue(bias=True), target, tiles=tiles, bn=bn),
    )


def measurement_key(
    data_shape: Sequence[int], out_channels: int, pads: Sequence[int], target: Any
) -> tuple[str, tuple[int, int, int, int], int]:
    """The table key of a biased 3x3 conv (channels padded to ``target``'s block), with the
    padded data shape and output channels it is measured at."""
    bn = _lanes(target)
    n, c, h, w = (int(d) for d in data_shape)
    shape = (n, -(-c // bn) * bn, h, w)
    o = -(-int(out_channels) // bn) * bn
    return _key(target, shape, o, pads, Epilogue(bias=True)), shape, o


__all__ = [
    "MIN_WINOGRAD_MACS",
    "cached_measurement",
    "measurement_key",
    "WinogradNCHWcPlan",
    "choose_tile",
    "is_candidate",
    "measurable_here",
    "measure",
    "mode",
    "pack_weight",
    "plan",
    "script",
    "table_path",
    "winograd_conv2d_nchwc",
]
