"""int8 dot-product micro-kernels for tensorization: ``C[i] += sum_{k<4} A[k] * B[i, k]``.

One description (``lanes`` int32 outputs, each the dot product of the same 4 activation bytes
``A`` with 4 weight bytes ``B[i, :]``; the weights are packed ``[..., lanes, 4]``) and one
implementation per instruction set:

==============  ===========  ==========================================================
name            lanes, A×B   instructions (per ``lanes × 4`` multiply-accumulates)
==============  ===========  ==========================================================
``vnni16``      16, u8×s8    ``vpdpbusd zmm`` (AVX-512 VNNI: cascadelake, icelake, znver4)
``vnni8``       8, u8×s8     ``vpdpbusd ymm`` (AVX512-VL VNNI / AVX-VNNI)
``avx512``      16, u8×s8    ``vpmaddubsw`` + ``vpmaddwd`` (AVX-512BW without VNNI)
``avx2``        8, u8×s8     ``vpmaddubsw`` + ``vpmaddwd`` + ``vpaddd`` (AVX2, e.g. znver3)
``sdot``        4, s8×s8     ``sdot v.4s, v.16b, v.4b[..]`` (AArch64 +dotprod)
==============  ===========  ==========================================================

``vpmaddubsw`` adds two u8×s8 products into a *saturating* int16: exact only when
``|x0*w0 + x1*w1| <= 32767``, guaranteed for weights in [-64, 63] (7-bit, ``reduce_range``, as
onnxruntime's AVX2 path) since 255 * 64 * 2 = 32640. The lowering picks ``avx2``/``avx512`` only
for such weights; full-range int8 weights on a target without VNNI use the plain (LLVM-vectorized)
description instead. VNNI and SDOT accumulate in int32 with no saturation.

Intrinsics are registered lazily under ``mcopt_dot_<name>`` (this module never imports
``tvm.s_tir.tensor_intrin``, whose CUDA part takes ~29 s to import).
"""

from __future__ import annotations

from typing import Any

#: name -> (lanes, activation dtype)
ISAS: dict[str, tuple[int, str]] = {
    "vnni16": (16, "uint8"),
    "vnni8": (8, "uint8"),
    "avx512": (16, "uint8"),
    "avx2": (8, "uint8"),
    "sdot": (4, "int8"),
}

_REGISTERED: set[str] = set()


def _desc(lanes: int, a_dtype: str) -> Any:
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def desc(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (4,), a_dtype, offset_factor=1)
        B = T.match_buffer(b, (lanes, 4), "int8", offset_factor=1)
        C = T.match_buffer(c, (lanes,), "int32", offset_factor=1)
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:4], B[0:lanes, 0:4])
            T.writes(C[0:lanes])
            for i in T.serial(0, lanes):
                for k in T.serial(0, 4):
                    with T.sblock("update"):
                        vi, vk = T.axis.remap("SR", [i, k])
                        C[vi] = C[vi] + T.cast(A[vk], "int32") * T.cast(B[vi, vk], "int32")

    return desc


def vnni_operand_dtype(lanes: int) -> str:
    """The type LLVM's ``vpdpbusd`` intrinsic declares its byte operands with: ``<4L x i8>``
    from LLVM 20 on, ``<L x i32>`` before."""
    from tvm.target.codegen import llvm_version_major

    return f"int8x{4 * lanes}" if llvm_version_major() >= 20 else f"int32x{lanes}"


def vpdpbusd(acc: Any, a_u8: Any, b_i8: Any, lanes: int) -> Any:
    """``acc (int32xL) + vpdpbusd(a, b)``: each lane adds the 4 u8 x s8 products of its 4 bytes of
    ``a`` and ``b`` (any ``4L``-byte vectors), for the hand-written TIR kernels."""
    from tvm import tirx

    op = vnni_operand_dtype(lanes)
    return tirx.call_llvm_pure_intrin(
        f"int32x{lanes}", f"llvm.x86.avx512.vpdpbusd.{32 * lanes}", acc,
        tirx.reinterpret(op, a_u8), tirx.reinterpret(op, b_i8),
    )  # fmt: skip


def _impl_vpdpbusd(lanes: int) -> Any:
    from tvm.script import tirx as T

    name = f"llvm.x86.avx512.vpdpbusd.{32 * lanes}"
    op_dtype = vnni_operand_dtype(lanes)

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (4,), "uint8", offset_factor=1)
        B = T.match_buffer(b, (lanes, 4), "int8", offset_factor=1)
        C = T.match_buffer(c, (lanes,), "int32", offset_factor=1)
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:4], B[0:lanes, 0:4])
            T.writes(C[0:lanes])
            a_i32 = T.reinterpret(A.vload([0], "uint8x4"), dtype="int32")
            C[T.ramp(T.int32(0), 1, lanes)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id(name),
                C.vload([0], dtype=f"int32x{lanes}"),
                T.reinterpret(T.broadcast(a_i32, lanes), dtype=op_dtype),
                T.reinterpret(B.vload([0, 0], dtype=f"int8x{4 * lanes}"), dtype=op_dtype),
                dtype=f"int32x{lanes}",
            )

    return impl


def _impl_pmaddubsw(lanes: int) -> Any:
    from tvm.script import tirx as T

    if lanes == 8:
        ubsw, wd = "llvm.x86.avx2.pmadd.ub.sw", "llvm.x86.avx2.pmadd.wd"
    else:
        ubsw, wd = "llvm.x86.avx512.pmaddubs.w.512", "llvm.x86.avx512.pmaddw.d.512"

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (4,), "uint8", offset_factor=1)
        B = T.match_buffer(b, (lanes, 4), "int8", offset_factor=1)
        C = T.match_buffer(c, (lanes,), "int32", offset_factor=1)
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:4], B[0:lanes, 0:4])
            T.writes(C[0:lanes])
            a_i32 = T.reinterpret(A.vload([0], "uint8x4"), dtype="int32")
            a_u8 = T.reinterpret(T.broadcast(a_i32, lanes), dtype=f"uint8x{4 * lanes}")
            pairs = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id(ubsw),
                a_u8,
                B.vload([0, 0], dtype=f"int8x{4 * lanes}"),
                dtype=f"int16x{2 * lanes}",
            )
            C[T.ramp(T.int32(0), 1, lanes)] += T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id(wd),
                pairs,
                T.broadcast(T.int16(1), 2 * lanes),
                dtype=f"int32x{lanes}",
            )

    return impl


def _impl_sdot() -> Any:
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (4,), "int8", offset_factor=1)
        B = T.match_buffer(b, (4, 4), "int8", offset_factor=1)
        C = T.match_buffer(c, (4,), "int32", offset_factor=1)
        with T.sblock("root"):
            T.reads(C[0:4], A[0:4], B[0:4, 0:4])
            T.writes(C[0:4])
            a_i32 = T.reinterpret(A.vload([0], "int8x4"), dtype="int32")
            C[T.ramp(T.int32(0), 1, 4)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.sdot.v4i32.v16i8"),
                C.vload([0], dtype="int32x4"),
                T.reinterpret(T.broadcast(a_i32, 4), dtype="int8x16"),
                B.vload([0, 0], dtype="int8x16"),
                dtype="int32x4",
            )

    return impl


def intrin_name(isa: str) -> str:
    """Register (once) and return the TensorIntrin name of ``isa`` (a key of :data:`ISAS`)."""
    from tvm.s_tir import TensorIntrin

    name = f"mcopt_dot_{isa}"
    if name in _REGISTERED:
        return name
    lanes, a_dtype = ISAS[isa]
    if isa.startswith("vnni"):
        impl = _impl_vpdpbusd(lanes)
    elif isa in ("avx2", "avx512"):
        impl = _impl_pmaddubsw(lanes)
    else:
        impl = _impl_sdot()
    try:
        TensorIntrin.register(name, _desc(lanes, a_dtype), impl)
    except Exception:  # already registered by an earlier import of this module (reload)
        pass
    _REGISTERED.add(name)
    return name


def macs_per_op(isa: str | None) -> int:
    """MACs per output lane of one instruction of ``isa``'s dot product: 4 for the one-instruction
    forms (VNNI ``vpdpbusd``, ``sdot``), 1 for the others (``vpmaddubsw`` + ``vpmaddwd`` + add,
    the generic code). The kernels scale their work by it when they decide whether to use the
    thread pool (:func:`.threads.parallel`)."""
    return 4 if isa is not None and (isa.startswith("vnni") or isa == "sdot") else 1


def narrow_isa(isa: str | None, lanes: int, target: Any) -> str | None:
    """The form of ``isa`` whose output block is ``lanes`` (``isa`` itself when it is), or None:
    ``vnni8`` (256-bit ``vpdpbusd``) for a ``vnni16`` target with AVX-512VL, where a layer with
    at most 8 output channels (PP-LCNet's stem, LeNet-5's first conv) would leave half of each
    512-bit dot product on padding."""
    if isa is not None and ISAS[isa][0] == lanes:
        return isa
    if isa == "vnni16" and lanes == 8:
        import tvm

        if not isinstance(target, tvm.target.Target):
            target = tvm.target.Target(target)
        if _has(target, "avx512vl"):
            return "vnni8"
    return None


def choose_isa(target: Any, weight_7bit: bool) -> str | None:
    """The dot-product micro-kernel for ``target`` (None: no exact one; use plain vectorized
    code). ``weight_7bit``: every weight lies in [-64, 63], so ``vpmaddubsw`` cannot saturate."""
    import tvm
    from tvm.target.codegen import target_has_features

    if not isinstance(target, tvm.target.Target):
        target = tvm.target.Target(target)
    attrs = target.attrs if target.attrs is not None else {}
    triple = str(attrs.get("mtriple", "") or "")
    if triple.startswith("aarch64"):
        mattr = [str(m) for m in (attrs.get("mattr", []) or [])]
        return "sdot" if any("dotprod" in m for m in mattr) or _has(target, "dotprod") else None

    def has(f: str) -> bool:
        return _has(target, f, target_has_features)

    if has("avx512vnni") and has("avx512f"):
        return "vnni16"
    if has("avxvnni") or (has("avx512vnni") and has("avx512vl")):
        return "vnni8"
    if not weight_7bit:
        return None
    if has("avx512bw"):
        return "avx512"
    if has("avx2"):
        return "avx2"
    return None


def _has(target: Any, feature: str, fn: Any = None) -> bool:
    if fn is None:
        from tvm.target.codegen import target_has_features as fn
    try:
        return bool(fn(feature, target))
    except Exception:  # LLVM cannot answer for this target
        return False
