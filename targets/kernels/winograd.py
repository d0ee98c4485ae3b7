"""Winograd F(m x m, 3 x 3) fp32 CPU kernel (TE + ``tvm.s_tir.schedule``), NCHW in and out.

Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks" (CVPR 2016). For the output tile
``(n, th, tw)`` = position ``p`` of ``P = N * TH * TW`` tiles (``TH = ceil(OH / m)``), alpha = m + 2,
``e = xi * alpha + nu``:

1. input transform ``V[e, c, p] = sum_{i,j} BT[xi, i] BT[nu, j] d[n, c, th*m + i, tw*m + j]`` over
   the zero-padded input ``d`` (a separate parallel stage);
2. batched GEMM ``M[e, o, p] = sum_c U[xi, nu, c, o] V[e, c, p]`` — the alpha^2 GEMMs where the
   multiplies are saved (alpha^2 / m^2 per output instead of 9), so it gets the register-tiled
   micro-kernel: ``parallel(e, p_block)`` / ``o_outer`` / ``p_outer`` / ``c`` / ``ro`` output
   channels (unrolled, one broadcast of U each) / ``pv`` vectors of tile positions (unrolled) /
   lanes (vectorized): ``ro * pv <= 12`` accumulators, ``ro + pv`` loads per ``ro * pv`` FMAs.
   U is packed at compile time to ``(alpha^2, O / ro, C, ro)`` so the ``ro`` broadcasts of a step
   are contiguous; ``p_block`` keeps a ``C x p_block`` slab of V in the L2 across the ``o`` loop;
3. output transform ``Y[n, o, th*m + a, tw*m + b] = act(bias[o] + sum_{xi,nu} AT[a, xi]
   AT[b, nu] M[e, o, p])`` (vectorized over ``tw``), then a crop to ``OH x OW`` when ``m`` does
   not divide the output size.

The transform sums are generated in Python from the numpy matrices of :mod:`mcopt.ops.winograd`
with only their nonzero terms; the output position picks its expression through a chain of
``if_then_else`` on the (unrolled, hence constant) tile coordinates, which the simplifier folds,
so no multiply by a structural zero is left in the code.

**Weight layout.** The kernel reads mcopt's U ``(alpha, alpha, C_in, C_out)``
(:func:`mcopt.ops.winograd.winograd_weight`); TOPI's ``conv2d_winograd_weight_transform`` writes
``(alpha, alpha, C_out, C_in)``, which is why it must not be mixed in (silently wrong when
``C_in == C_out``). :func:`pack_winograd_weight` is the only place U is reordered.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mcopt.ops.winograd import TRANSFORMS
from mcopt.targets.kernels.epilogue import Epilogue

#: (ro, pv) register tiles tried for the GEMM: ro output channels x pv vectors of tile positions
_TILES = ((4, 3), (3, 4), (6, 2), (2, 6), (12, 1), (8, 1), (4, 2), (2, 4), (4, 1), (2, 2), (1, 4))


@dataclass(frozen=True)
class WinogradPlan:
    """Geometry and blocking of one Winograd conv."""

    m: int
    alpha: int
    oh: int
    ow: int
    th: int
    tw: int
    p: int  # real tile positions N * TH * TW
    pp: int  # padded to the GEMM chunk
    ro: int
    pv: int
    pblock: int  # tile positions per parallel GEMM task
    lanes: int = 8

    @property
    def chunk(self) -> int:
        """Tile positions per register tile of the GEMM (``pv * lanes``)."""
        return self.pv * self.lanes


def plan_winograd(
    data_shape: Sequence[int],
    out_channels: int,
    m: int,
    pads: Sequence[int],
    lanes: int = 8,
    l2_bytes: int = 512 * 1024,
    cores: int = 1,
) -> WinogradPlan:
    """Tile counts and the GEMM blocking for ``data_shape`` (NCHW) -> ``out_channels``."""
    n, c, h, w = (int(d) for d in data_shape)
    pt, pl, pb, pr = (int(p) for p in pads)
    oh, ow = h + pt + pb - 2, w + pl + pr - 2
    th, tw = -(-oh // m), -(-ow // m)
    p = n * th * tw
    best = None
    for ro, pv in _TILES:
        if out_channels % ro:
            continue
        chunk = pv * lanes
        pp = -(-p // chunk) * chunk
        score = (ro * pv / (ro + pv)) * p / pp  # FMAs per load x useful fraction
        if best is None or score > best[0] + 1e-9:
            best = (score, ro, pv, pp)
    assert best is not None
    _, ro, pv, pp = best
    chunk = pv * lanes
    # a C x pblock slab of V in half the L2; at least 2 tasks per core when possible
    pblock = max(chunk, (l2_bytes // 2 // (4 * c)) // chunk * chunk)
    pblock = min(pblock, pp)
    alpha = m + 2
    while alpha * alpha * (-(-pp // pblock)) < 2 * cores and pblock > chunk:
        pblock = max(chunk, (pblock // 2) // chunk * chunk)
    while pp % pblock:
        pblock -= chunk
    return WinogradPlan(m, alpha, oh, ow, th, tw, p, pp, ro, pv, pblock, lanes)


def pack_winograd_weight(u: np.ndarray, ro: int) -> np.ndarray:
    """mcopt's U ``(alpha, alpha, C_in, C_out)`` -> ``(alpha^2, C_out / ro, C_in, ro)``."""
    a, a2, c, o = u.shape
    if o % ro:
        raise ValueError(f"{o} output channels do not divide into blocks of {ro}")
    return np.ascontiguousarray(u.reshape(a * a2, c, o // ro, ro).transpose(0, 2, 1, 3))


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


def epilogue_text(val: str, epilogue: Epilogue, bias: str, residual: str = "") -> str:
    """TVMScript text of ``act(val + bias (+ residual))`` for ``epilogue`` (``bias`` /
    ``residual``: the indexed buffer loads)."""
    lo, hi = epilogue.bounds()
    if epilogue.bias:
        val = f"{val} + {bias}"
    if epilogue.residual:
        val = f"{val} + {residual}"
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


def winograd_script(
    data_shape: Sequence[int],
    out_channels: int,
    plan: WinogradPlan,
    pads: Sequence[int],
    epilogue: Epilogue,
) -> str:
    """TVMScript source of the whole kernel (see the module docstring).

    Written as loop-level TIR text generated here: the transforms are unrolled in Python to their
    nonzero terms (a TE version selecting among alpha^2 expressions took ~15 s to compile for
    F(4x4, 3x3); this one compiles in about a second).
    """
    bt, _, at = TRANSFORMS[plan.m]
    m, a = plan.m, plan.alpha
    n, c, h, w = (int(d) for d in data_shape)
    o = int(out_channels)
    pt, pl = int(pads[0]), int(pads[1])
    th, tw, p_real, pp, ro, pv, ln = plan.th, plan.tw, plan.p, plan.pp, plan.ro, plan.pv, plan.lanes
    hp, wp = th * m + 2, tw * m + 2
    oh, ow = plan.oh, plan.ow
    a2, ch, pb = a * a, pv * ln, plan.pblock
    npb = pp // pb
    exact = oh == th * m and ow == tw * m
    lo, hi = epilogue.bounds()
    L: list[str] = []
    add = L.append
    add("# from tvm.script import tirx as T")
    add("@T.prim_func")
    bias_arg = f', bias: T.Buffer(({o},), "float32")' if epilogue.bias else ""
    add(
        f'def main(x: T.Buffer(({n}, {c}, {h}, {w}), "float32"), '
        f'u: T.Buffer(({a2}, {o // ro}, {c}, {ro}), "float32"){bias_arg}, '
        f'out: T.Buffer(({n}, {o}, {oh}, {ow}), "float32")):'
    )
    add('    T.func_attr({"tirx.noalias": True})')
    add(f'    xpad = T.alloc_buffer(({n}, {c}, {hp}, {wp}), "float32")')
    add(f'    V = T.alloc_buffer(({a2}, {c}, {pp}), "float32")')
    add(f'    M = T.alloc_buffer(({a2}, {o}, {pp}), "float32")')
    y_name = "out" if exact else "Y"
    if not exact:
        add(f'    Y = T.alloc_buffer(({n}, {o}, {th * m}, {tw * m}), "float32")')
    # 1. zero padding
    add(f"    for nc in T.parallel({n * c}):")
    add(f"        for yy, xx in T.grid({hp}, {wp}):")
    add(
        f"            xpad[nc // {c}, nc % {c}, yy, xx] = T.if_then_else("
        f"{pt} <= yy and yy < {h + pt} and {pl} <= xx and xx < {w + pl}, "
        f"x[nc // {c}, nc % {c}, yy - {pt}, xx - {pl}], T.float32(0.0))"
    )
    # 2. input transform over (c, n, ty, tx), vectorized over tile columns; V's padded tail = 0
    vi = _vec_width(tw, ln)
    for line in scratch_tasks("ti", c * n, a * a, vi, "cn"):
        add(line)
    add(f"        for ty, txo in T.grid({th}, {tw // vi}):")
    add(f"            for l in T.vectorized({vi}):")
    pin = f"(cn % {n}) * {th * tw} + ty * {tw} + txo * {vi} + l"

    def d(i: int, j: int) -> str:
        return f"xpad[cn % {n}, cn // {n}, ty * {m} + {i}, (txo * {vi} + l) * {m} + {j}]"

    first, second = separable(bt, d, a, "ti")
    for k, val in first:
        add(f"                ti[{k}, l] = {val}")
    for xi, nu, val in second:
        add(f"                V[{xi * a + nu}, cn // {n}, {pin}] = {val}")
    if pp > p_real:
        add(f"    for e, rc, pz in T.grid({a2}, {c}, {pp - p_real}):")
        add(f"        V[e, rc, {p_real} + pz] = T.float32(0.0)")
    # 3. batched GEMM, register tile ro x (pv * lanes)
    pidx = f"(t % {npb}) * {pb} + po * {ch} + v * {ln} + l"
    add(f"    for t in T.parallel({a2 * npb}):")
    add(f"        for oo, po in T.grid({o // ro}, {pb // ch}):")
    add(f"            for oi in T.unroll({ro}):")
    add(f"                for v in T.unroll({pv}):")
    add(f"                    for l in T.vectorized({ln}):")
    add(f"                        M[t // {npb}, oo * {ro} + oi, {pidx}] = T.float32(0.0)")
    add(f"            for rc in range({c}):")
    add(f"                for oi in T.unroll({ro}):")
    add(f"                    for v in T.unroll({pv}):")
    add(f"                        for l in T.vectorized({ln}):")
    add(
        f"                            M[t // {npb}, oo * {ro} + oi, {pidx}] = "
        f"M[t // {npb}, oo * {ro} + oi, {pidx}] + u[t // {npb}, oo, rc, oi] * "
        f"V[t // {npb}, rc, {pidx}]"
    )
    # 4. output transform (+ bias, clamp), vectorized over tile columns when they divide
    vw = _vec_width(tw, ln)
    for line in scratch_tasks("to", n * o, m * a, vw, "t"):
        add(line)
    add(f"        for ty, txo in T.grid({th}, {tw // vw}):")
    add(f"            for l in T.vectorized({vw}):")
    p_out = f"(t // {o}) * {th * tw} + ty * {tw} + txo * {vw} + l"

    def mv(xi: int, nu: int) -> str:
        return f"M[{xi * a + nu}, t % {o}, {p_out}]"

    first, second = separable(at, mv, a, "to")
    for k, val in first:
        add(f"                to[{k}, l] = {val}")
    for ya, xb, val in second:
        val = epilogue_text(val, epilogue, f"bias[t % {o}]")
        add(
            f"                {y_name}[t // {o}, t % {o}, ty * {m} + {ya}, "
            f"(txo * {vw} + l) * {m} + {xb}] = {val}"
        )
    if not exact:
        add(f"    for t in T.parallel({n * o}):")
        add(f"        for yy, xx in T.grid({oh}, {ow}):")
        add(f"            out[t // {o}, t % {o}, yy, xx] = Y[t // {o}, t % {o}, yy, xx]")
    return "\n".join(L) + "\n"


def winograd_conv2d(
    data_shape: Sequence[int],
    out_channels: int,
    m: int,
    pads: Sequence[int],
    epilogue: Epilogue | None = None,
    target: Any = None,
) -> tuple[Any, WinogradPlan]:
    """A scheduled PrimFunc ``(x (N, C, H, W), u_packed (alpha^2, O/ro, C, ro), [bias (O,)],
    y (N, O, OH, OW))`` (float32) and its plan; pack U with :func:`pack_winograd_weight`
    (``plan.ro``). ``epilogue``: bias and activation (no residual)."""
    from tvm.script import from_source

    from mcopt.targets.kernels.params import _info

    info = _info(target)
    epilogue = epilogue or Epilogue(bias=True)
    if epilogue.residual:
        raise ValueError("winograd kernel: a fused residual is not supported")
    if m not in TRANSFORMS:
        raise ValueError(f"winograd tile m must be one of {sorted(TRANSFORMS)}, got {m}")
    plan = plan_winograd(data_shape, out_channels, m, pads, info.lanes, info.l2_bytes, info.cores)
    src = winograd_script(data_shape, out_channels, plan, pads, epilogue)
    func = from_source(src)
    if not hasattr(func, "body"):  # an IRModule
        func = func["main"]
    return func.with_attr("tirx.is_scheduled", True), plan


# --- per-layer measurement (Winograd only where it is faster on the target) --------------------
def _time_ms(lib: Any, args: list[Any], dev: Any, repeat: int) -> float:
    ev = lib.mod.time_evaluator("main", dev, number=3, repeat=repeat)
    return float(min(ev(*args).results)) * 1e3


def time_kernel(func: Any, arrays: list[np.ndarray], target: Any, repeat: int = 5) -> float:
    """Best-of-``repeat`` ms of the PrimFunc ``func`` compiled for ``target`` on ``arrays``."""
    import tvm

    lib = tvm.compile(tvm.IRModule({"main": func}), target=target)
    dev = tvm.cpu()
    args = [tvm.runtime.tensor(np.ascontiguousarray(a), dev) for a in arrays]
    return _time_ms(lib, args, dev, repeat)


def measure_layer(
    data_shape: Sequence[int],
    out_channels: int,
    pads: Sequence[int] = (1, 1, 1, 1),
    tiles: Sequence[int] = (2, 4),
    target: Any = None,
    repeat: int = 5,
) -> dict[str, float]:
    """Best-of-``repeat`` ms of the direct NCHWc conv template (kernel only, activations already
    blocked) and of the Winograd kernel for each tile ``m`` (NCHW in and out), random data:
    ``{"direct": ms, "f2": ms, "f4": ms}``."""
    import tvm

    from mcopt.targets.kernels import layout
    from mcopt.targets.kernels.conv2d import conv2d_nchwc
    from mcopt.targets.kernels.params import choose_conv_params
    from mcopt.targets.kernels.target_info import host_target

    target = target or host_target()
    dev = tvm.cpu()
    rng = np.random.default_rng(0)
    n, c, h, w = (int(d) for d in data_shape)
    o = int(out_channels)
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    g = rng.standard_normal((o, c, 3, 3)).astype(np.float32)
    b = np.zeros(o, np.float32)

    def t(a: np.ndarray) -> Any:
        return tvm.runtime.tensor(np.ascontiguousarray(a), dev)

    p = choose_conv_params((n, c, h, w), (o, c, 3, 3), 1, tuple(pads), 1, target)
    f = conv2d_nchwc((n, c, h, w), (o, c, 3, 3), 1, tuple(pads), 1, target, p, Epilogue(bias=True))
    lib = tvm.compile(tvm.IRModule({"main": f}), target=target)
    oh, ow = h + pads[0] + pads[2] - 2, w + pads[1] + pads[3] - 2
    args = [
        t(layout.pack_nchwc(x, p.ic_bn)),
        t(layout.pack_conv_weight(g, p.ic_bn, p.oc_kbn)),
        t(layout.pack_bias(b, p.oc_bn)),
        t(np.zeros((n, o // p.oc_bn, oh, ow, p.oc_bn), np.float32)),
    ]
    res = {"direct": _time_ms(lib, args, dev, repeat)}
    from mcopt.ops.winograd import winograd_weight

    for m in tiles:
        f, plan = winograd_conv2d((n, c, h, w), o, m, pads, Epilogue(bias=True), target)
        lib = tvm.compile(tvm.IRModule({"main": f}), target=target)
        u = pack_winograd_weight(winograd_weight(g, m), plan.ro)
        args = [t(x), t(u), t(b), t(np.zeros((n, o, oh, ow), np.float32))]
        res[f"f{m}"] = _time_ms(lib, args, dev, repeat)
    return res


def target_key(target: Any) -> str:
    """``kind-mcpu-cores`` of a ``tvm.target.Target``: the machine part of a table key."""
    attrs = target.attrs if target.attrs is not None else {}
    return f"{target.kind.name}-{attrs.get('mcpu', '')}-{attrs.get('num-cores', 1)}"


def layer_key(
    target_name: str, data_shape: Sequence[int], out_channels: int, pads: Sequence[int]
) -> str:
    """The cache key of one layer: ``target|NxCxHxW->O|pads``."""
    return (
        f"{target_name}|{'x'.join(str(int(d)) for d in data_shape)}->{int(out_channels)}|"
        f"{','.join(str(int(p)) for p in pads)}"
    )


def cached_row(
    table_path: str | os.PathLike[str],
    key: str,
    needed: Sequence[str],
    measure: Callable[[], dict[str, float]],
) -> dict[str, float]:
    """The row ``key`` of the JSON measurement table at ``table_path``, measured (``measure()``)
    and stored when missing or lacking one of ``needed``. A missing or corrupt file counts as
    empty (it is re-measured, never fatal); the file is rewritten atomically, re-read first so
    that rows another process wrote meanwhile are kept."""
    path = Path(table_path)
    row = _read_table(path).get(key)
    if isinstance(row, dict) and all(k in row for k in needed):
        return row
    row = {**(row if isinstance(row, dict) else {}), **measure()}
    table = _read_table(path)
    table[key] = row
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".json")
    with os.fdopen(fd, "w") as fh:
        json.dump(table, fh, indent=1, sort_keys=True)
    os.replace(tmp, path)
    return row


def _read_table(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):  # missing or corrupt: measured again
        return {}
    return data if isinstance(data, dict) else {}


def cached_measurement(
    table_path: str,
    data_shape: Sequence[int],
    out_channels: int,
    pads: Sequence[int],
    target: Any = None,
    tiles: Sequence[int] = (2, 4),
) -> dict[str, float]:
    """:func:`measure_layer` through a JSON cache keyed by target + shape (measured once per
    machine; see :func:`cached_row`)."""
    from mcopt.targets.kernels.target_info import host_target

    key = layer_key(target_key(target or host_target()), data_shape, out_channels, pads)
    return cached_row(
        table_path,
        key,
        [f"f{m}" for m in tiles],
        lambda: measure_layer(data_shape, out_channels, pads, tiles, target or host_target()),
    )


__all__ = [
    "cached_measurement",
    "cached_row",
    "scratch_tasks",
    "time_kernel",
    "target_key",
    "layer_key",
    "measure_layer",
    "WinogradPlan",
    "pack_winograd_weight",
    "plan_winograd",
    "winograd_conv2d",
    "winograd_script",
]
