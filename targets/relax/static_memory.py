"""A variant of the VM entry function that allocates nothing: its buffers are allocated once.

After ``StaticPlanBlockMemory`` + ``LowerAllocTensor`` a static-shape ``main`` allocates its planned
storages, the tensors inside them and its outputs on every call (``vm.builtin.alloc_storage`` +
``alloc_tensor``, from the pooled allocator). TVM 0.27 keeps allocations across calls only for CUDA
graphs (``vm.builtin.cuda_graph.get_cached_alloc``, absent from a CPU build), so
:func:`lift_static_buffers` adds, beside an unchanged ``main``:

- ``main_bound(inputs..., buffers...)``: ``main`` with every allocation turned into a parameter,
  outputs included: a call allocates nothing, and its results are those buffers (overwritten by the
  next call);
- ``main_bound_alloc()``: allocates the ``buffers`` tuple (same storages, offsets and sharing as
  ``main`` plans, so the buffers of tensors that are never live together still share memory).

Only when every allocation of ``main`` has a static size (no symbolic shape) and is read only
through the tensors allocated from it: otherwise (or when ``main`` allocates nothing, e.g. an
Identity model) nothing is added and callers use ``main``.
:meth:`mcopt.targets.relax.builder.CompiledModel.prepare` is the caller.
"""

from __future__ import annotations

from typing import Any

import tvm
from tvm import relax, tirx

ENTRY = "main"
BOUND = "main_bound"
BOUND_ALLOC = "main_bound_alloc"

_ALLOC_STORAGE = tvm.ir.Op.get("relax.memory.alloc_storage")
_ALLOC_TENSOR = tvm.ir.Op.get("relax.memory.alloc_tensor")


def _const_shape(expr: Any) -> bool:
    return isinstance(expr, relax.ShapeExpr) and all(
        isinstance(v, tirx.IntImm) for v in expr.values
    )


def _const_scalar(expr: Any) -> bool:
    return isinstance(expr, (tirx.IntImm, tvm.ir.StringImm, tvm.ir.GenericConst))


def _is_call(value: Any, op: Any) -> bool:
    return isinstance(value, relax.Call) and value.op.same_as(op)


def _lifted(bindings: list[Any], result: Any) -> list[Any] | None:
    """The tensor vars of ``main``'s allocations in binding order, or None when one of its
    allocations cannot be lifted (or there is none)."""
    storages: set[Any] = set()
    tensors: list[Any] = []
    reads: dict[Any, int] = {}  # storage var -> reads by its alloc_tensors
    for b in bindings:
        v = b.value
        if _is_call(v, _ALLOC_STORAGE):
            if not (_const_shape(v.args[0]) and all(_const_scalar(a) for a in v.args[1:])):
                return None
            storages.add(b.var)
        elif _is_call(v, _ALLOC_TENSOR):
            if v.args[0] not in storages or not (
                _const_shape(v.args[2]) and all(_const_scalar(a) for a in (v.args[1], *v.args[3:]))
            ):
                return None
            tensors.append(b.var)
            reads[v.args[0]] = reads.get(v.args[0], 0) + 1
    if not tensors:
        return None
    uses: dict[Any, int] = {}
    for expr in [b.value for b in bindings] + [result]:
        for var in relax.analysis.free_vars(expr):
            if var in storages:
                uses[var] = uses.get(var, 0) + 1
    if any(uses.get(s, 0) != reads.get(s, 0) for s in storages):
        return None  # a storage read by something else than its alloc_tensors
    return tensors


def bound_variant(func: relax.Function) -> tuple[relax.Function, relax.Function] | None:
    """(``main_bound_alloc``, ``main_bound``) for ``func`` (see the module docstring), or None."""
    body = func.body
    if not isinstance(body, relax.SeqExpr) or any(
        isinstance(blk, relax.DataflowBlock) for blk in body.blocks
    ):
        return None
    bindings = [b for blk in body.blocks for b in blk.bindings]
    if not all(isinstance(b, relax.VarBinding) for b in bindings):
        return None
    tensors = _lifted(bindings, body.body)
    if tensors is None:
        return None
    lifted = set(tensors) | {b.var for b in bindings if _is_call(b.value, _ALLOC_STORAGE)}
    allocs = [b for b in bindings if b.var in lifted]
    rest = [b for b in bindings if b.var not in lifted]
    alloc = relax.Function(
        [],
        relax.SeqExpr([relax.BindingBlock(allocs)], relax.Tuple(list(tensors))),
        relax.TupleType([t.ty for t in tensors]),
        is_pure=True,
    )
    bound = relax.Function(
        list(func.params) + list(tensors),
        relax.SeqExpr([relax.BindingBlock(rest)], body.body),
        func.ret_ty,
        is_pure=func.is_pure,
    )
    for key, value in (func.attrs or {}).items():
        if key != "global_symbol":  # AttachGlobalSymbol names each after its GlobalVar
            alloc = alloc.with_attr(key, value)
            bound = bound.with_attr(key, value)
    # fresh variables: a Relax variable is bound in one place of a module only
    return relax.utils.copy_with_new_vars(alloc), relax.utils.copy_with_new_vars(bound)


def lift_static_buffers(mod: tvm.IRModule) -> tvm.IRModule:
    """``mod`` with ``main_bound`` and ``main_bound_alloc`` added where ``main`` allows them."""
    names = {gv.name_hint for gv in mod.get_global_vars()}
    if ENTRY not in names or BOUND in names or BOUND_ALLOC in names:
        return mod
    func = mod[ENTRY]
    if not isinstance(func, relax.Function):
        return mod
    made = bound_variant(func)
    if made is None:
        return mod
    mod = mod.clone()
    mod[BOUND_ALLOC], mod[BOUND] = made
    return mod


@tvm.transform.module_pass(opt_level=0, name="LiftStaticBuffers")
def LiftStaticBuffers(mod: tvm.IRModule, _ctx: Any) -> tvm.IRModule:  # noqa: N802
    """:func:`lift_static_buffers` as a module pass (after ``LowerAllocTensor``)."""
    return lift_static_buffers(mod)


def build_pipeline() -> tvm.transform.Pass:
    """``tvm.compile``'s Relax build pipeline for CPU targets (``"default"``, i.e.
    ``tvm.relax.pipeline.default_build_pipeline`` in TVM 0.27; ``main`` compiles to the same
    bytecode, a test checks it) with :data:`LiftStaticBuffers` after ``LowerAllocTensor``."""
    t = relax.transform
    return tvm.transform.Sequential(
        [
            relax.backend.DispatchSampling(),
            relax.backend.DispatchSortScan(),
            t.LegalizeOps(),
            t.RewriteDataflowReshape(),
            t.ToNonDataflow(),
            t.RemovePurityChecking(),
            t.CallTIRRewrite(),
            t.StaticPlanBlockMemory(),
            t.RewriteCUDAGraph(),
            t.LowerAllocTensor(),
            LiftStaticBuffers,
            t.KillAfterLastUse(),
            t.LowerRuntimeBuiltin(),
            t.ComputePrimValue(),
            t.VMShapeLower(),
            t.AttachGlobalSymbol(),
        ],
        name="mcopt_relax_build",
    )


__all__ = [
    "BOUND",
    "BOUND_ALLOC",
    "LiftStaticBuffers",
    "bound_variant",
    "build_pipeline",
    "lift_static_buffers",
]
