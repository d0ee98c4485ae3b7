"""Energy per inference, per layer, from Horowitz's 45 nm table (the lecture's "battery life" slide).

The model. One inference of a graph costs, per node (a *layer* row)::

    E = E_compute + E_rf + E_sram + E_dram

- ``E_compute``: arithmetic. A MAC is one multiply plus one accumulate at the layer's arithmetic type:

  ==========================  ========================================  ================================
  op                           per MAC                                   per output element (epilogue)
  ==========================  ========================================  ================================
  conv2d / dense / matmul /    float mult(b) + float add(b), ``b`` the   --
  batch_norm / winograd        input's float width
  qconv2d / qdense             int mult(8 x 8) + int add(32)             float mult(32) (rescale)
  fx_conv2d / fx_dense         int mult(bx x bw) + int add(acc_bits)     int add(acc_bits) (round/shift)
  binary_* ``binary_input=1``  XNOR + popcount: 2 x int add(1)            2 float mult(32) + float add(32)
  binary_* ``binary_input=0``  float add(32) (add or subtract x)         float mult(32) + float add(32)
  ==========================  ========================================  ================================

  MAC counts are the op schema's (:func:`mcopt.analysis.cost.node_macs`); Winograd counts its batched
  GEMM stage only (its transforms are not counted). A weight stored sparse (CSR) counts
  ``MACs x nnz / size`` *effective* MACs: a sparse kernel multiplies the stored non-zeros only.
  Ops without MACs do one operation per output element (pooling: one per window element,
  global pooling: one per input element) at their input's type: an add for relu / clip / max / add /
  pool, a multiply for mul / div / sigmoid / softmax / quantize / ...; view ops (reshape, flatten,
  squeeze, identity, ...) cost nothing and move nothing.
- ``E_rf``: register-file reads of the two operands of every (effective) MAC at their widths, plus
  one accumulator write per output element.
- ``E_sram``: activations: every non-constant input is read from SRAM once, every output written
  once (perfect reuse below the SRAM: a lower bound on activation traffic).
- ``E_dram``: the layer's weights read from DRAM once per inference, counted from their **real encoded
  bytes** (``TensorType.nbytes``: CSR values + indices, codebook indices + centroids, packed bits,
  int8 + scales, ...). A node computed from constants only (``codebook_weight``: the decode of shared
  weights, a ``dequantize`` of a constant, ...) is a *weight decoder*: it is folded into the layer
  that consumes it (its constants' DRAM bytes, one register-file read per decoded element); its
  output is not an activation. ``weight_memory="sram"`` reads weights from SRAM instead (a model
  small enough to stay on chip: Deep Compression's argument).

Scaling to narrower (or wider) types, from the 32-bit entries (Horowitz, ISSCC 2014, 45 nm)::

    int add(b)      = 0.1 pJ x b / 32                 (linear:    8-bit 0.025 pJ; Horowitz 0.03)
    int mult(a x b) = 3.1 pJ x (a x b) / 32^2         (quadratic: 8-bit 0.19 pJ;  Horowitz 0.2)
    float add(b)    = 0.9 pJ x b / 32                 (linear:    fp16 0.45 pJ;   Horowitz 0.4)
    float mult(b)   = 3.7 pJ x (b / 32)^2             (quadratic: fp16 0.93 pJ;   Horowitz 1.1)
    register file, SRAM, DRAM: 1, 5, 640 pJ per 32 bits, linear in the bits moved

Every number is an estimate of the *relative* cost of the arithmetic and data movement a graph asks
for, not a measurement of any chip. Pure numpy / stdlib; no plotting here.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from mcopt.analysis.cost import human_bytes, human_count, node_macs
from mcopt.ir.core import Graph, Node, Value
from mcopt.ir.types import FixedPoint, Sparse, TensorType


# --- the table -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class EnergyTable:
    """Energy of 32-bit operations in pJ (defaults: Horowitz, 45 nm, as in the lecture), and the
    scaling rules to other widths (see the module docstring)."""

    int_add: float = 0.1
    float_add: float = 0.9
    register_file: float = 1.0
    int_mult: float = 3.1
    float_mult: float = 3.7
    sram: float = 5.0
    dram: float = 640.0

    def iadd(self, bits: float) -> float:
        """Integer add of `bits`-wide operands: linear in the width."""
        return self.int_add * bits / 32.0

    def imul(self, a_bits: float, b_bits: float) -> float:
        """Integer multiply `a_bits` x `b_bits`: proportional to the product of the widths."""
        return self.int_mult * (a_bits * b_bits) / 32.0**2

    def fadd(self, bits: float) -> float:
        """Float add: linear in the width."""
        return self.float_add * bits / 32.0

    def fmul(self, bits: float) -> float:
        """Float multiply: quadratic in the width."""
        return self.float_mult * (bits / 32.0) ** 2

    def rf(self, bits: float) -> float:
        """One register-file access of `bits` bits."""
        return self.register_file * bits / 32.0

    def sram_bytes(self, nbytes: float) -> float:
        """Reading or writing `nbytes` bytes of SRAM."""
        return self.sram * nbytes * 8.0 / 32.0

    def dram_bytes(self, nbytes: float) -> float:
        """Reading `nbytes` bytes of DRAM."""
        return self.dram * nbytes * 8.0 / 32.0


HOROWITZ_45NM = EnergyTable()

# ops that only re-label their input (no arithmetic, no data movement)
_VIEW_OPS = frozenset({"reshape", "flatten", "squeeze", "unsqueeze", "identity", "dropout"})
# pure data movement: SRAM traffic, no arithmetic
_MOVE_OPS = frozenset({"transpose", "concat", "split", "slice", "pad", "cast"})
# one add-class operation per output element (compares, max, relu, add, pooling)
_ADD_OPS = frozenset(
    {
        "relu",
        "clip",
        "add",
        "sub",
        "neg",
        "max_pool",
        "avg_pool",
        "global_avg_pool",
        "global_max_pool",
        "reduce_mean",
        "reduce_max",
        "reduce_min",
        "reduce_sum",
        "argmax",
        "argmin",
        "fx_relu",
        "fx_clip",
        "fx_add",
        "fx_max_pool",
        "fx_avg_pool",
    }
)
_MAC_FLOAT = frozenset({"conv2d", "dense", "matmul", "batch_norm", "winograd_conv2d"})
_MAC_INT8 = frozenset({"qconv2d", "qdense"})
_MAC_FIXED = frozenset({"fx_conv2d", "fx_dense"})
_MAC_BINARY = frozenset({"binary_conv2d", "binary_dense"})


def _bits(dtype: str) -> int:
    return 1 if dtype == "bool" else np.dtype(dtype).itemsize * 8


def _is_float(dtype: str) -> bool:
    return np.dtype(dtype).kind == "f"


def _type_label(dtype: str) -> str:
    return ("fp" if _is_float(dtype) else "int") + str(_bits(dtype))


# --- rows and report -----------------------------------------------------------------------------
@dataclass
class LayerEnergy:
    """One node's energy per inference (pJ) and what it was computed from.

    ``params``: weight elements (dense count); ``stored_params``: those actually stored (the
    non-zeros of a sparse weight); ``macs``: the schema's MAC count; ``effective_macs``: MACs actually done (x density for sparse
    weights); ``ops``: non-MAC operations; ``act_read_bytes`` / ``act_write_bytes``: SRAM activation
    traffic; ``weight_bytes``: encoded weight bytes read from DRAM (decoders folded in, listed in
    ``folded``); ``arith``: the arithmetic type (``fp32``, ``int8``, ``fx8``, ``xnor``, ``bwn``, ...)."""

    name: str
    op: str
    arith: str
    params: int
    stored_params: int
    weight_bytes: int
    macs: int
    effective_macs: float
    ops: int
    act_read_bytes: int
    act_write_bytes: int
    compute_pj: float
    rf_pj: float
    sram_pj: float
    dram_pj: float
    folded: list[str] = field(default_factory=list)

    @property
    def total_pj(self) -> float:
        return self.compute_pj + self.rf_pj + self.sram_pj + self.dram_pj

    @property
    def dram_share(self) -> float:
        """Fraction of this layer's energy spent reading weights from DRAM."""
        t = self.total_pj
        return self.dram_pj / t if t > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["total_pj"] = self.total_pj
        return d


_COMPONENTS = ("compute_pj", "rf_pj", "sram_pj", "dram_pj")


@dataclass
class EnergyReport:
    """Per-layer energy rows of one graph and their totals (totals are exactly the rows' sums)."""

    graph_name: str
    rows: list[LayerEnergy]
    table: EnergyTable = HOROWITZ_45NM
    weight_memory: str = "dram"

    def _sum(self, key: str) -> float:
        return float(sum(getattr(r, key) for r in self.rows))

    @property
    def compute_pj(self) -> float:
        return self._sum("compute_pj")

    @property
    def rf_pj(self) -> float:
        return self._sum("rf_pj")

    @property
    def sram_pj(self) -> float:
        return self._sum("sram_pj")

    @property
    def dram_pj(self) -> float:
        return self._sum("dram_pj")

    @property
    def total_pj(self) -> float:
        return float(sum(r.total_pj for r in self.rows))

    @property
    def total_uj(self) -> float:
        """Total energy per inference in microjoules (1 uJ = 1e6 pJ)."""
        return self.total_pj * 1e-6

    def by_name(self) -> dict[str, LayerEnergy]:
        return {r.name: r for r in self.rows}

    def totals(self) -> dict[str, float]:
        """Graph-level totals in pJ (and ``total_uj``)."""
        return {
            "compute_pj": self.compute_pj,
            "rf_pj": self.rf_pj,
            "sram_pj": self.sram_pj,
            "dram_pj": self.dram_pj,
            "total_pj": self.total_pj,
            "total_uj": self.total_uj,
        }

    def summary(self) -> str:
        t = self.total_pj or 1.0
        return (
            f"{format_energy(self.total_pj)} per inference (DRAM {self.dram_pj / t:.0%}, SRAM "
            f"{self.sram_pj / t:.0%}, arithmetic {self.compute_pj / t:.0%}, registers "
            f"{self.rf_pj / t:.0%})"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "graph": self.graph_name,
            "weight_memory": self.weight_memory,
            "table_pj_32bit": asdict(self.table),
            "rows": [r.to_dict() for r in self.rows],
            **self.totals(),
        }

    _HEADERS = ("layer", "op", "type", "MACs", "weights", "arith", "regs", "SRAM", "DRAM", "total")

    def to_markdown(self, min_share: float = 0.0) -> str:
        """Markdown table, one row per layer (rows below `min_share` of the total are summed into
        one "other" row), then the totals."""
        total = self.total_pj or 1.0
        shown = [r for r in self.rows if r.total_pj / total >= min_share]
        rest = [r for r in self.rows if r.total_pj / total < min_share]
        lines = [
            "| " + " | ".join(self._HEADERS) + " |",
            "|" + "|".join(["---"] * 3 + ["---:"] * (len(self._HEADERS) - 3)) + "|",
        ]
        for r in shown:
            lines.append(
                "| "
                + " | ".join(
                    [
                        r.name,
                        r.op,
                        r.arith,
                        human_count(r.effective_macs) if r.macs else "",
                        human_bytes(r.weight_bytes) if r.weight_bytes else "",
                        format_energy(r.compute_pj),
                        format_energy(r.rf_pj),
                        format_energy(r.sram_pj),
                        format_energy(r.dram_pj),
                        format_energy(r.total_pj),
                    ]
                )
                + " |"
            )
        if rest:
            lines.append(
                f"| ({len(rest)} other nodes) | | | | | "
                + " | ".join(format_energy(sum(getattr(r, k) for r in rest)) for k in _COMPONENTS)
                + f" | {format_energy(sum(r.total_pj for r in rest))} |"
            )
        lines.append(
            "| **total** | | | | | "
            + " | ".join(f"**{format_energy(getattr(self, k))}**" for k in _COMPONENTS)
            + f" | **{format_energy(self.total_pj)}** |"
        )
        return "\n".join(lines)


def format_energy(pj: float) -> str:
    """pJ with a readable unit: 1234.0 -> '1.23 nJ', 5.6e6 -> '5.60 uJ'."""
    for div, unit in ((1e12, "J"), (1e9, "mJ"), (1e6, "uJ"), (1e3, "nJ")):
        if abs(pj) >= div:
            return f"{pj / div:.2f} {unit}"
    return f"{pj:.3g} pJ"


# --- the estimate --------------------------------------------------------------------------------
def _weight_derived(graph: Graph) -> set[int]:
    """ids of the non-constant values computed from constants only (decoded weights)."""
    derived: set[int] = set()
    for node in graph.nodes:
        ins = [v for v in node.inputs if v is not None]
        if ins and all(v.is_const or id(v) in derived for v in ins):
            derived.update(id(v) for v in node.outputs)
    return derived


def _density(w: Value | None) -> float:
    """Stored non-zeros / elements of a weight (1.0 unless it is stored sparse)."""
    if w is None or not isinstance(w.type.encoding, Sparse):
        return 1.0
    size = w.type.size
    return w.type.encoding.nnz / size if size else 1.0


def _stored(c: Value) -> int:
    enc = c.type.encoding
    return int(enc.nnz) if isinstance(enc, Sparse) else c.type.size


def _weight_bits(w: Value | None, default: int) -> int:
    if w is None:
        return default
    enc = w.type.encoding
    if isinstance(enc, FixedPoint):
        return enc.bits
    bits = getattr(enc, "bits", None)
    return int(bits) if isinstance(bits, int) else _bits(w.dtype)


def _other_ops(node: Node, in_t: TensorType | None, out_size: int) -> int:
    if node.op in ("max_pool", "avg_pool", "fx_max_pool", "fx_avg_pool"):
        k = node.attrs.get("kernel", (1, 1))
        return out_size * int(math.prod(k))
    reductions = ("reduce_mean", "reduce_max", "reduce_min", "reduce_sum", "argmax", "argmin")
    if node.op in ("global_avg_pool", "global_max_pool", *reductions) and in_t is not None:
        return in_t.size
    return out_size


def _arith(
    node: Node, macs: float, outs: int, t: EnergyTable
) -> tuple[str, float, float, float, int]:
    """(arith label, compute pJ, register-file pJ, effective MACs, other ops) of one node."""
    x = node.inputs[0] if node.inputs else None
    w = node.inputs[1] if len(node.inputs) > 1 else None
    x_dtype = x.dtype if x is not None else (node.outputs[0].dtype if node.outputs else "float32")
    op = node.op
    if op in _MAC_FLOAT:
        dens = _density(w) if op in ("conv2d", "dense") else 1.0
        eff = macs * dens
        b = _bits(x_dtype)
        if _is_float(x_dtype):
            per_mac = t.fmul(b) + t.fadd(b)
        else:
            per_mac = t.imul(b, b) + t.iadd(32)
        return _type_label(x_dtype), eff * per_mac, eff * 2 * t.rf(b) + outs * t.rf(b), eff, 0
    if op in _MAC_INT8:
        bx, bw = _bits(x_dtype), _weight_bits(w, 8)
        eff = macs * _density(w)
        compute = eff * (t.imul(bx, bw) + t.iadd(32)) + outs * t.fmul(32)
        return f"int{max(bx, bw)}", compute, eff * (t.rf(bx) + t.rf(bw)) + outs * t.rf(32), eff, 0
    if op in _MAC_FIXED:
        bits = int(node.attrs.get("bits", 8))
        acc = int(node.attrs.get("acc_bits", 32))
        bx, bw = _bits(x_dtype), _weight_bits(w, bits)
        eff = macs * _density(w)
        compute = eff * (t.imul(bx, bw) + t.iadd(acc)) + outs * t.iadd(acc)
        return f"fx{bits}", compute, eff * (t.rf(bx) + t.rf(bw)) + outs * t.rf(acc), eff, 0
    if op in _MAC_BINARY:
        if int(node.attrs.get("binary_input", 0)):
            compute = macs * 2 * t.iadd(1) + outs * (2 * t.fmul(32) + t.fadd(32))
            return "xnor", compute, macs * 2 * t.rf(1) + outs * t.rf(32), macs, 0
        compute = macs * t.fadd(32) + outs * (t.fmul(32) + t.fadd(32))
        return "bwn", compute, macs * (t.rf(32) + t.rf(1)) + outs * t.rf(32), macs, 0
    if op in _VIEW_OPS or op in _MOVE_OPS:
        return _type_label(x_dtype), 0.0, 0.0, 0.0, 0
    if macs:  # an op with MACs not listed above (a user's op): float/int MACs at its input type
        b = _bits(x_dtype)
        per_mac = t.fmul(b) + t.fadd(b) if _is_float(x_dtype) else t.imul(b, b) + t.iadd(32)
        return _type_label(x_dtype), macs * per_mac, macs * 2 * t.rf(b), macs, 0
    n_ops = _other_ops(node, x.type if x is not None else None, outs)
    b = _bits(x_dtype)
    if op in _ADD_OPS:
        each = t.fadd(b) if _is_float(x_dtype) else t.iadd(b)
    else:
        each = t.fmul(b) if _is_float(x_dtype) else t.imul(b, b)
    return _type_label(x_dtype), n_ops * each, 0.0, 0.0, n_ops


def estimate_energy(
    graph: Graph, *, table: EnergyTable = HOROWITZ_45NM, weight_memory: str = "dram"
) -> EnergyReport:
    """Energy of one inference of `graph`, per layer (see the module docstring for the model).

    `weight_memory`: ``"dram"`` (default: weights streamed from DRAM every inference) or ``"sram"``
    (weights held on chip)."""
    if weight_memory not in ("dram", "sram"):
        raise ValueError(f"weight_memory must be 'dram' or 'sram', got {weight_memory!r}")
    derived = _weight_derived(graph)
    weight_cost = table.dram_bytes if weight_memory == "dram" else table.sram_bytes
    # weight decoders, folded into their first consumer
    pending: dict[
        int, tuple[list[str], int, int, float]
    ] = {}  # value id -> (names, params, bytes, rf)
    rows: list[LayerEnergy] = []
    for node in graph.nodes:
        ins = [v for v in node.inputs if v is not None]
        consts = [v for v in ins if v.is_const]
        params = sum(c.type.size for c in consts)
        stored = sum(_stored(c) for c in consts)
        wbytes = sum(c.type.nbytes for c in consts)
        folded: list[str] = []
        extra_rf = 0.0
        for v in ins:
            got = pending.pop(id(v), None)
            if got is not None:
                folded += got[0]
                params += got[1]
                stored += got[2]
                wbytes += got[3]
                extra_rf += got[4]
        outs = [v for v in node.outputs]
        if ins and all(v.is_const or id(v) in derived for v in ins):
            decoded = sum(o.type.size * _bits(o.dtype) for o in outs)
            users = [u for o in outs for u in o.users()]
            if users:  # folded into the consumer; the graph's outputs keep their own row
                first = id(outs[0])
                pending[first] = (
                    [*folded, node.name],
                    params,
                    stored,
                    wbytes,
                    extra_rf + table.rf(1) * decoded,
                )
                for o in outs[1:]:
                    pending[id(o)] = ([], 0, 0, 0, 0.0)
                continue
        try:
            macs = node_macs(node)
        except Exception:  # an op without a schema: no arithmetic counted
            macs = 0
        out_size = sum(o.type.size for o in outs)
        arith, compute, rf, eff, n_ops = _arith(node, float(macs), out_size, table)
        if node.op in _VIEW_OPS:
            read = write = 0
        else:
            read = sum(v.type.nbytes for v in ins if not v.is_const and id(v) not in derived)
            write = sum(o.type.nbytes for o in outs)
        rows.append(
            LayerEnergy(
                name=node.name,
                op=node.op,
                arith=arith,
                params=params,
                stored_params=stored,
                weight_bytes=wbytes,
                macs=int(macs),
                effective_macs=float(eff),
                ops=int(n_ops),
                act_read_bytes=int(read),
                act_write_bytes=int(write),
                compute_pj=float(compute),
                rf_pj=float(rf + extra_rf),
                sram_pj=table.sram_bytes(read + write),
                dram_pj=weight_cost(wbytes),
                folded=folded,
            )
        )
    return EnergyReport(graph.name, rows, table=table, weight_memory=weight_memory)
