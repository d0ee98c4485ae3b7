"""C code generation for the ``fpga`` target: plain C99 loops in fixed-width integer types, for HLS tools.

Layout of the generated source (``<prefix>.c`` + ``<prefix>.h``):

- weights and biases as ``static const intN_t`` arrays (the integer constants of the fixed-point graph);
- one ``static void`` function per layer, per sample, on flat row-major (C, H, W) buffers: the loops of
  the numpy references in :mod:`mcopt.ops.fixed`, with the same integer arithmetic (int32/int64
  accumulators, ``(acc + 2^(s-1)) >> s`` requantization, saturation), so the result is bit-exact;
- ``#pragma HLS`` hints from the folding (:mod:`mcopt.targets.fpga.folding`): the output-pixel loop is
  pipelined with ``II = reuse factor = (MH/PE)*(MW/SIMD)`` and the multipliers limited to ``PE*SIMD``
  (hls4ml's reuse-factor idiom), weights partitioned cyclically by ``PE*SIMD``; ``DATAFLOW`` in the
  top function (layer pipelining, as FINN builds it). gcc ignores them (``-Wno-unknown-pragmas``);
- ``<prefix>_top``: the integer-only top function (the HLS top: quantized input(s) in, integer
  output(s) out, one sample);
- ``<prefix>_run``: host-side float wrapper (``#ifndef __SYNTHESIS__``): ``fx_quantize`` of the inputs,
  the top function per sample of the batch, ``fx_dequantize`` of the outputs.

The C relies on two gcc guarantees (implementation-defined in ISO C): ``>>`` of a negative signed
integer is an arithmetic shift, and conversion to a narrower signed type happens only after saturation.
Left shifts of possibly negative numbers are written as multiplications (no undefined behaviour).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

from mcopt.errors import TargetError
from mcopt.ir.core import Graph, Node, Value
from mcopt.ops.fixed import qrange
from mcopt.targets.fpga.folding import FoldingPlan

_CTYPE = {"int8": "int8_t", "int16": "int16_t", "int32": "int32_t", "int64": "int64_t"}
_MOVES = ("flatten", "reshape", "identity")


def _ident(name: str, taken: set[str]) -> str:
    s = re.sub(r"\W", "_", name)
    if not s or s[0].isdigit():
        s = "v_" + s
    base, i = s, 0
    while s in taken:
        i += 1
        s = f"{base}_{i}"
    taken.add(s)
    return s


def _array(ctype: str, name: str, arr: np.ndarray) -> str:
    vals = arr.ravel().tolist()
    rows = [", ".join(map(str, vals[i : i + 24])) for i in range(0, len(vals), 24)]
    suffix = "LL" if ctype == "int64_t" else ""
    if suffix:
        rows = [
            ", ".join(f"{v}{suffix}" for v in vals[i : i + 24]) for i in range(0, len(vals), 24)
        ]
    body = ",\n  ".join(rows)
    return f"static const {ctype} {name}[{max(1, len(vals))}] = {{\n  {body or '0'}\n}};\n"


def _requant(acc: str, shift: int, bits: int) -> str:
    """C expression: saturating round-half-up shift of the int64 expression `acc`."""
    lo, hi = qrange(bits)
    if shift > 0:
        e = f"(((int64_t)({acc}) + {1 << (shift - 1)}LL) >> {shift})"
    elif shift < 0:
        e = f"((int64_t)({acc}) * {1 << (-shift)}LL)"
    else:
        e = f"((int64_t)({acc}))"
    return f"fx_sat({e}, {lo}LL, {hi}LL)"


@dataclass
class CSource:
    """The generated files and what the wrapper needs to call them."""

    prefix: str
    source: str
    header: str
    inputs: list[tuple[str, tuple[int, ...], int, str]]  # (name, shape, frac_bits, int dtype)
    outputs: list[tuple[str, tuple[int, ...], int, str]]
    batch: int


class _Emitter:
    def __init__(self, graph: Graph, plan: FoldingPlan | None, prefix: str) -> None:
        self.g, self.plan, self.prefix = graph, plan, prefix
        self.folds = plan.by_name() if plan is not None else {}
        self.taken: set[str] = {prefix, f"{prefix}_top", f"{prefix}_run", "fx_sat"}
        self.buf: dict[int, str] = {}  # value id -> C buffer name
        self.consts: list[str] = []
        self.funcs: list[str] = []
        self.calls: list[str] = []
        self.bufs: list[str] = []

    # --- helpers ---------------------------------------------------------------------------------
    def size(self, v: Value) -> int:
        return v.type.size // self.batch

    def const(self, v: Value) -> str:
        if id(v) not in self.buf:
            assert v.const is not None
            name = _ident("W_" + v.name, self.taken)
            self.consts.append(_array(_CTYPE[v.dtype], name, v.const))
            self.buf[id(v)] = name
        return self.buf[id(v)]

    def pragmas(self, n: Node, weights: str | None) -> tuple[str, str]:
        """(pipeline pragmas inside the pixel loop, comment) from the folding."""
        lf = self.folds.get(n.name)
        if lf is None:
            return "", ""
        lines = [f"#pragma HLS PIPELINE II={max(1, lf.reuse_factor)}"]
        if lf.kind in ("mvau", "pool_avg"):
            lines.append(f"#pragma HLS ALLOCATION operation instances=mul limit={lf.pe * lf.simd}")
        if weights is not None and lf.pe * lf.simd > 1:
            lines.append(
                f"#pragma HLS ARRAY_PARTITION variable={weights} cyclic factor={lf.pe * lf.simd}"
            )
        note = f" PE={lf.pe} SIMD={lf.simd} reuse={lf.reuse_factor} cycles={lf.cycles}"
        return "\n".join(lines), note

    # --- layers ----------------------------------------------------------------------------------
    def emit(self) -> CSource:
        g = self.g
        if not g.inputs:
            raise TargetError("fpga: the graph has no inputs")
        self.batch = g.inputs[0].shape[0] if g.inputs[0].shape else 1
        for v in (*g.inputs, *(o for n in g.nodes for o in n.outputs)):
            if not v.shape or v.shape[0] != self.batch:
                raise TargetError(
                    f"fpga: value %{v.name} {v.type} does not have the batch dim {self.batch} first"
                )
        ins, outs = [], []
        for n in g.nodes:
            if n.op == "fx_quantize":
                src = n.inputs[0]
                if src is None or all(src is not i for i in g.inputs):
                    raise TargetError(
                        f"fpga: node {n.name!r} (fx_quantize) must read a graph input"
                    )
                name = _ident("in_" + src.name, self.taken)
                self.buf[id(n.output)] = name
                ins.append(
                    (
                        src.name,
                        src.shape,
                        int(n.attrs["frac_bits"]),
                        n.output.dtype,
                        name,
                        int(n.attrs["bits"]),
                    )
                )
            elif n.op == "fx_dequantize":
                if all(n.output is not o for o in g.outputs):
                    raise TargetError(
                        f"fpga: node {n.name!r} (fx_dequantize) must produce a graph output"
                    )
                src = n.inputs[0]
                assert src is not None
                outs.append(
                    (
                        n.output.name,
                        n.output.shape,
                        int(n.attrs["frac_bits"]),
                        src.dtype,
                        self.buf[id(src)],
                    )
                )
            elif n.op in _MOVES:
                src = n.inputs[0]
                assert src is not None
                self.buf[id(n.output)] = self.buf[id(src)]  # row-major: a view, no code
            else:
                self.layer(n)
        if len(outs) != len(g.outputs):
            raise TargetError(
                "fpga: every graph output must come from fx_dequantize (run the 'fixed-point' pass first)"
            )
        return CSource(
            self.prefix,
            self.source(ins, outs),
            self.header(ins, outs),
            [(nm, sh, f, dt) for nm, sh, f, dt, _, _ in ins],
            [(nm, sh, f, dt) for nm, sh, f, dt, _ in outs],
            self.batch,
        )

    def layer(self, n: Node) -> None:
        fn = _ident("L_" + n.name, self.taken)
        x = n.inputs[0]
        if x is None or id(x) not in self.buf:
            raise TargetError(
                f"fpga: node {n.name!r} ({n.op}) reads a value with no integer buffer"
            )
        out = n.output
        if out.dtype not in _CTYPE:
            raise TargetError(f"fpga: node {n.name!r} ({n.op}) produces {out.type}: not an integer")
        yb = _ident("b_" + out.name, self.taken)
        self.buf[id(out)] = yb
        self.bufs.append(f"  static {_CTYPE[out.dtype]} {yb}[{self.size(out)}];")
        xt, yt = _CTYPE[x.dtype], _CTYPE[out.dtype]
        emit = getattr(self, "_" + n.op, None)
        if emit is None:
            raise TargetError(
                f"fpga: op {n.op!r} (node {n.name!r}) has no C emitter; run 'fixed-point' first"
            )
        body, args, params = emit(n, xt, yt)
        self.funcs.append(
            f"/* {n.name}: {n.op} {list(x.shape[1:])} -> {list(out.shape[1:])}{self.pragmas(n, None)[1]} */\n"
            f"static void {fn}({params}) {{\n{body}}}\n"
        )
        self.calls.append(f"  {fn}({', '.join([*args, yb])});")

    def _fx_conv2d(self, n: Node, xt: str, yt: str) -> tuple[str, list[str], str]:
        x, w = n.inputs[0], n.inputs[1]
        b = n.inputs[2] if len(n.inputs) > 2 else None
        assert x is not None and w is not None
        _, c, h, wd = x.shape
        _, o, ho, wo = n.output.shape
        _, cg, kh, kw = w.shape
        (sh, sw), (pt, pl, _, _), (dh, dw), groups = (
            n.attrs["strides"],
            n.attrs["pads"],
            n.attrs["dilations"],
            n.attrs["groups"],
        )
        og = o // groups
        wn = self.const(w)
        acc = "int32_t" if n.attrs["acc_bits"] == 32 else "int64_t"
        init = f"({acc}){self.const(b)}[o]" if b is not None else "0"
        prag, _ = self.pragmas(n, wn)
        body = f"""  for (int oh = 0; oh < {ho}; oh++)
  for (int ow = 0; ow < {wo}; ow++) {{
{prag}
    for (int o = 0; o < {o}; o++) {{
      const int g = o / {og};
      {acc} acc = {init};
      for (int c = 0; c < {cg}; c++)
        for (int i = 0; i < {kh}; i++) {{
          const int ih = oh * {sh} - {pt} + i * {dh};
          if (ih < 0 || ih >= {h}) continue;
          for (int j = 0; j < {kw}; j++) {{
            const int iw = ow * {sw} - {pl} + j * {dw};
            if (iw < 0 || iw >= {wd}) continue;
            acc += ({acc})x[((g * {cg} + c) * {h} + ih) * {wd} + iw] * ({acc}){wn}[((o * {cg} + c) * {kh} + i) * {kw} + j];
          }}
        }}
      y[(o * {ho} + oh) * {wo} + ow] = ({yt}){_requant("acc", n.attrs["shift"], n.attrs["bits"])};
    }}
  }}
"""
        del c
        return body, [self.buf[id(x)]], f"const {xt} *x, {yt} *y"

    def _fx_dense(self, n: Node, xt: str, yt: str) -> tuple[str, list[str], str]:
        x, w = n.inputs[0], n.inputs[1]
        b = n.inputs[2] if len(n.inputs) > 2 else None
        assert x is not None and w is not None
        o, k = w.shape
        rows = self.size(x) // k
        wn = self.const(w)
        acc = "int32_t" if n.attrs["acc_bits"] == 32 else "int64_t"
        init = f"({acc}){self.const(b)}[o]" if b is not None else "0"
        prag, _ = self.pragmas(n, wn)
        body = f"""  for (int r = 0; r < {rows}; r++) {{
{prag}
    for (int o = 0; o < {o}; o++) {{
      {acc} acc = {init};
      for (int k = 0; k < {k}; k++)
        acc += ({acc})x[r * {k} + k] * ({acc}){wn}[o * {k} + k];
      y[r * {o} + o] = ({yt}){_requant("acc", n.attrs["shift"], n.attrs["bits"])};
    }}
  }}
"""
        return body, [self.buf[id(x)]], f"const {xt} *x, {yt} *y"

    def _fx_relu(self, n: Node, xt: str, yt: str) -> tuple[str, list[str], str]:
        x = n.inputs[0]
        assert x is not None
        body = f"  for (int i = 0; i < {self.size(x)}; i++) y[i] = x[i] > 0 ? x[i] : 0;\n"
        return body, [self.buf[id(x)]], f"const {xt} *x, {yt} *y"

    def _fx_clip(self, n: Node, xt: str, yt: str) -> tuple[str, list[str], str]:
        x = n.inputs[0]
        assert x is not None
        lo, hi = n.attrs["lo"], n.attrs["hi"]
        body = (
            f"  for (int i = 0; i < {self.size(x)}; i++)\n"
            f"    y[i] = ({yt})fx_sat((int64_t)x[i], {lo}LL, {hi}LL);\n"
        )
        return body, [self.buf[id(x)]], f"const {xt} *x, {yt} *y"

    def _fx_add(self, n: Node, xt: str, yt: str) -> tuple[str, list[str], str]:
        a, b = n.inputs[0], n.inputs[1]
        assert a is not None and b is not None
        bt = _CTYPE[b.dtype]
        la, lb = 1 << n.attrs["lshift_a"], 1 << n.attrs["lshift_b"]
        s = f"(int64_t)a[i] * {la}LL + (int64_t)b[i] * {lb}LL"
        prag, _ = self.pragmas(n, None)
        body = (
            f"  for (int i = 0; i < {self.size(a)}; i++) {{\n{prag}\n"
            f"    y[i] = ({yt}){_requant(s, n.attrs['shift'], n.attrs['bits'])};\n  }}\n"
        )
        return body, [self.buf[id(a)], self.buf[id(b)]], f"const {xt} *a, const {bt} *b, {yt} *y"

    def _pool(self, n: Node, xt: str, yt: str, avg: bool) -> tuple[str, list[str], str]:
        x = n.inputs[0]
        assert x is not None
        _, c, h, wd = x.shape
        _, _, ho, wo = n.output.shape
        (kh, kw), (sh, sw), (pt, pl, _, _) = n.attrs["kernel"], n.attrs["strides"], n.attrs["pads"]
        dh, dw = n.attrs.get("dilations", (1, 1))
        lo = qrange(np.dtype(x.dtype).itemsize * 8)[0]
        if avg:
            init, upd = "int64_t s = 0;", f"s += x[(ch * {h} + ih) * {wd} + iw];"
            fin = _requant(f"s * {n.attrs['mult']}LL", n.attrs["shift"], n.attrs["bits"])
        else:
            init = f"int64_t s = {lo}LL;"
            upd = f"if (x[(ch * {h} + ih) * {wd} + iw] > s) s = x[(ch * {h} + ih) * {wd} + iw];"
            fin = "s"
        prag, _ = self.pragmas(n, None)
        body = f"""  for (int ch = 0; ch < {c}; ch++)
  for (int oh = 0; oh < {ho}; oh++)
  for (int ow = 0; ow < {wo}; ow++) {{
{prag}
    {init}
    for (int i = 0; i < {kh}; i++) {{
      const int ih = oh * {sh} - {pt} + i * {dh};
      if (ih < 0 || ih >= {h}) continue;
      for (int j = 0; j < {kw}; j++) {{
        const int iw = ow * {sw} - {pl} + j * {dw};
        if (iw < 0 || iw >= {wd}) continue;
        {upd}
      }}
    }}
    y[(ch * {ho} + oh) * {wo} + ow] = ({yt}){fin};
  }}
"""
        return body, [self.buf[id(x)]], f"const {xt} *x, {yt} *y"

    def _fx_max_pool(self, n: Node, xt: str, yt: str) -> tuple[str, list[str], str]:
        return self._pool(n, xt, yt, avg=False)

    def _fx_avg_pool(self, n: Node, xt: str, yt: str) -> tuple[str, list[str], str]:
        return self._pool(n, xt, yt, avg=True)

    # --- files -----------------------------------------------------------------------------------
    def _top_sig(self, ins: list, outs: list) -> str:
        ps = [f"const {_CTYPE[dt]} {bn}[{math.prod(sh[1:])}]" for _, sh, _, dt, bn, _ in ins]
        ps += [
            f"{_CTYPE[dt]} out{i}[{math.prod(sh[1:])}]" for i, (_, sh, _, dt, _) in enumerate(outs)
        ]
        return f"void {self.prefix}_top({', '.join(ps)})"

    def _run_sig(self, ins: list, outs: list) -> str:
        ps = [f"const float *x{i}" for i in range(len(ins))]
        ps += [f"float *y{i}" for i in range(len(outs))]
        return f"int {self.prefix}_run({', '.join(ps)})"

    def header(self, ins: list, outs: list) -> str:
        guard = f"{self.prefix.upper()}_H"
        lines = [
            f"/* {self.prefix}: integer-only fixed-point network generated by mcopt (fpga target). */",
            f"#ifndef {guard}",
            f"#define {guard}",
            "#include <stdint.h>",
            f"#define {self.prefix.upper()}_BATCH {self.batch}",
        ]
        for i, (nm, sh, f, dt, _, bits) in enumerate(ins):
            lines.append(f"/* input {i} %{nm}: {list(sh)}, Q{bits - f}.{f} in {dt} */")
        for i, (nm, sh, f, dt, _) in enumerate(outs):
            lines.append(f"/* output {i} %{nm}: {list(sh)}, {f} fractional bits in {dt} */")
        lines += [
            f"{self._top_sig(ins, outs)};  /* one sample, integer only (HLS top) */",
            "#ifndef __SYNTHESIS__",
            f"{self._run_sig(ins, outs)};  /* whole batch, float in/out */",
            "#endif",
            f"#endif /* {guard} */",
            "",
        ]
        return "\n".join(lines)

    def source(self, ins: list, outs: list) -> str:
        top_body = [
            "#pragma HLS DATAFLOW",
            *self.bufs,
            *self.calls,
        ]
        for i, (_, sh, _, _, bn) in enumerate(outs):
            top_body.append(f"  for (int i = 0; i < {math.prod(sh[1:])}; i++) out{i}[i] = {bn}[i];")
        run = [f"{self._run_sig(ins, outs)} {{"]
        for _, sh, _, dt, bn, _ in ins:
            run.append(f"  static {_CTYPE[dt]} q_{bn}[{math.prod(sh[1:])}];")
        for i, (_, sh, _, dt, _) in enumerate(outs):
            run.append(f"  static {_CTYPE[dt]} r{i}[{math.prod(sh[1:])}];")
        run.append(f"  for (int n = 0; n < {self.batch}; n++) {{")
        for i, (_, sh, f, dt, bn, bits) in enumerate(ins):
            sz, (lo, hi) = math.prod(sh[1:]), qrange(bits)
            run.append(f"    for (int i = 0; i < {sz}; i++) {{")
            run.append(
                f"      double t = floor((double)x{i}[n * {sz} + i] * ldexp(1.0, {f}) + 0.5);"
            )
            run.append(
                f"      q_{bn}[i] = ({_CTYPE[dt]})(t < {lo} ? {lo} : (t > {hi} ? {hi} : t));"
            )
            run.append("    }")
        args = [f"q_{bn}" for *_, bn, _ in ins] + [f"r{i}" for i in range(len(outs))]
        run.append(f"    {self.prefix}_top({', '.join(args)});")
        for i, (_, sh, f, _, _) in enumerate(outs):
            sz = math.prod(sh[1:])
            run.append(f"    for (int i = 0; i < {sz}; i++)")
            run.append(f"      y{i}[n * {sz} + i] = (float)((double)r{i}[i] * ldexp(1.0, {-f}));")
        run += ["  }", "  return 0;", "}"]
        ins_top = [(a, b, c, d, f"{e}", g) for a, b, c, d, e, g in ins]
        return "\n".join(
            [
                f"/* {self.prefix}.c: generated by mcopt's fpga target from graph {self.g.name!r}. */",
                "/* Bit-exact with mcopt.ops.fixed's numpy references (gcc: arithmetic >> on signed). */",
                "#include <stdint.h>",
                f'#include "{self.prefix}.h"',
                "",
                "static inline int64_t fx_sat(int64_t v, int64_t lo, int64_t hi) {",
                "  return v < lo ? lo : (v > hi ? hi : v);",
                "}",
                "",
                "/* ---- weights (fixed point) ---- */",
                *self.consts,
                "/* ---- layers ---- */",
                *self.funcs,
                f"{self._top_sig(ins_top, outs)} {{",
                *top_body,
                "}",
                "",
                "#ifndef __SYNTHESIS__",
                "#include <math.h>",
                *run,
                "#endif",
                "",
            ]
        )


def emit_c(graph: Graph, plan: FoldingPlan | None = None, prefix: str = "model") -> CSource:
    """Generate C99 for an integer-only fixed-point graph (see the module doc)."""
    if not re.fullmatch(r"[A-Za-z_]\w*", prefix):
        raise TargetError(f"fpga: prefix {prefix!r} is not a C identifier")
    return _Emitter(graph, plan, prefix).emit()


__all__ = ["CSource", "emit_c"]
