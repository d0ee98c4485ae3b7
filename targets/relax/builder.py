"""Build: lower an mcopt Graph, run the Relax pipeline (fusion + a default CPU schedule), compile
with ``tvm.compile`` and wrap the result in a :class:`CompiledModel` that runs on the Relax VM.

Pipelines (``build(..., pipeline=)``):

- ``"mcopt"`` (default): graph planning (:mod:`mcopt.targets.cpu.plan`: conv/dense + folded BN +
  residual + activation fused into one kernel, activations kept in the blocked NCHW[x]c layout
  between kernels) and the kernel templates of :mod:`mcopt.targets.cpu.kernels`
  (:func:`mcopt.targets.cpu.lower_planned.lower_planned`); the remaining Relax ops then go through the
  ``"mcopt-plain"`` passes.
- ``"mcopt-plain"``: every op lowered with plain Relax ops in NCHW, then LegalizeOps,
  AnnotateTIROpPattern, FoldConstant, FuseOps, FuseTIR, DeadCodeElimination and
  :func:`mcopt.targets.cpu.schedule.cpu_schedule_pass` (parallel outer loops over all cores,
  vectorized inner loops) before ``tvm.compile``'s default lowering.
- ``"default"``: what ``tvm.compile`` does alone on llvm (legalize only: no fusion, one thread).

Threads: the generated code runs on TVM's thread pool with ``num-cores`` of the target (all cores
of the host for ``"cpu"``); ``TVM_NUM_THREADS`` overrides it at run time.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tvm
from tvm import relax

from mcopt.errors import TargetError
from mcopt.ir.core import Graph
from mcopt.targets.registry import TargetSpec, get_target
from mcopt.targets.relax.lower import _first_line, lower
from mcopt.targets.runtime import CompiledBase

PIPELINES = ("mcopt", "mcopt-plain", "default")
_Tensor = tvm.runtime.Tensor
_BOUND = "main_bound"  # mcopt.targets.relax.static_memory.BOUND (a test checks)


def _to_numpy(obj: Any) -> list[np.ndarray]:
    """Outputs as numpy arrays, copied out of the runtime's tensors (a DLPack view + a numpy copy:
    ~1 us, against ~10 us for ``Tensor.numpy()`` on a small output)."""
    if isinstance(obj, np.ndarray):
        return [obj]
    if hasattr(obj, "__dlpack__") and hasattr(obj, "shape"):
        try:
            # a view that keeps the runtime tensor alive: the VM allocates each output anew, so
            # nothing else writes to it (no copy)
            return [np.from_dlpack(obj)]
        except (BufferError, TypeError, RuntimeError):  # not on the CPU, or an odd dtype
            return [obj.numpy()]
    if hasattr(obj, "numpy"):
        return [obj.numpy()]
    out: list[np.ndarray] = []
    for item in obj:  # a runtime Array / tuple of tensors
        out.extend(_to_numpy(item))
    return out


def _outputs(result: Any) -> list[np.ndarray]:
    """:func:`_to_numpy` with the common case (one CPU tensor) first."""
    if type(result) is _Tensor:
        try:
            return [np.from_dlpack(result)]
        except (BufferError, TypeError, RuntimeError):
            pass
    return _to_numpy(result)


def _input_buffers(arrays: Sequence[np.ndarray], device: Any) -> tuple[list[Any], list[Any]]:
    """Device tensors shaped like ``arrays``, filled with them, and a numpy view of each tensor's
    memory (DLPack; None where there is none: that input is copied in with ``copyfrom``)."""
    tensors, views = [], []
    for a in arrays:
        t = tvm.runtime.empty(a.shape, str(a.dtype), device)
        try:
            view = np.from_dlpack(t)
        except (BufferError, TypeError, RuntimeError):
            view = None
        if view is None:
            t.copyfrom(a)
        else:
            view[...] = a
        tensors.append(t)
        views.append(view)
    return tensors, views


def _refill(inputs: Sequence[Any], names: Sequence[str], slots: Sequence[Any]) -> bool:
    """The unchecked refill of the common call: positional arrays (or one dict by ``names``) each a
    numpy array of exactly its slot's ``(view, shape, dtype)`` are copied into the views; False
    (the caller takes the checked path, which refills everything) as soon as one is not."""
    arrays = inputs
    if len(inputs) == 1 and type(inputs[0]) is dict and len(inputs[0]) == len(slots):
        feeds = inputs[0]
        arrays = [feeds.get(n) for n in names]
    if len(arrays) != len(slots):
        return False
    for a, (v, shape, dtype) in zip(arrays, slots):
        # `is`: numpy's builtin dtypes are singletons; an equal other one is checked
        if type(a) is not np.ndarray or a.dtype is not dtype or a.shape != shape:
            return False
        v[...] = a
    return True


class _ThreadInputs:
    """One thread's input tensors for :meth:`CompiledModel.run`: the tensors, numpy views of their
    memory, and which outputs share memory with an input buffer (None until the first call)."""

    __slots__ = ("alias", "slots", "tensors", "views")

    def __init__(self, tensors: list[Any], views: list[Any]) -> None:
        self.tensors = tensors
        self.views = views
        self.alias: tuple[bool, ...] | None = None
        #: (view, shape, dtype) per input for the unchecked refill; None: no view of some input
        self.slots = (
            None if any(v is None for v in views) else [(v, v.shape, v.dtype) for v in views]
        )


class CompiledModel(CompiledBase):
    """A compiled model: run it, time it, export it.

    ``input_specs`` is ``[(name, shape, dtype), ...]`` (empty = unknown, e.g. for a model loaded
    from a library file: inputs are then passed through unchecked).

    Calling it: :meth:`run` (numpy in, numpy out, every result its own array) costs a few
    microseconds over the kernels; :meth:`prepare` returns a :class:`PreparedRun`, a call bound to
    its own buffers that allocates nothing per call, for when those microseconds matter.
    """

    def __init__(
        self,
        executable: Any,
        target: str,
        input_specs: Sequence[tuple[str, tuple[int, ...], str]] = (),
        output_names: Sequence[str] = (),
        pipeline: str = "mcopt",
    ) -> None:
        super().__init__(executable, target, input_specs, output_names, pipeline)
        self.choices: dict[str, int] = {}  # per-layer choices of the lowering (see build)
        #: the planned graph the default build lowered (fused ops, layouts, kernels; None otherwise)
        self.planned: Graph | None = None
        self.device = tvm.cpu()
        self._vm = relax.VirtualMachine(executable, self.device)
        self._main = self._vm["main"]
        self._names = [n for n, _, _ in self.input_specs]
        self._local = threading.local()
        self._local.main = self._main  # the building thread's; other threads make their own

    # --- inputs ---------------------------------------------------------------------------------
    def _bind(self, args: Sequence[Any], named: Mapping[str, Any]) -> list[Any]:
        """Checked inputs as device tensors (this thread's, see :meth:`_bind_state`)."""
        return self._bind_state(args, named).tensors

    def _bind_state(self, args: Sequence[Any], named: Mapping[str, Any]) -> _ThreadInputs:
        """Checked inputs in this thread's input tensors. The tensors are allocated once per thread
        (and again when an input's shape or dtype changes) and refilled through a numpy view of
        their memory (DLPack): ~0.2 us, against ~9 us for ``Tensor.copyfrom`` and ~27 us for a new
        tensor — which matters for LeNet-sized models whose whole run is ~10 microseconds."""
        from mcopt.targets.runtime import bind_inputs

        arrays = bind_inputs(self.input_specs, args, named)
        st: _ThreadInputs | None = getattr(self._local, "inputs", None)
        if (
            st is None
            or len(st.views) != len(arrays)
            or any(
                v is None or v.shape != a.shape or v.dtype != a.dtype
                for v, a in zip(st.views, arrays)
            )
        ):
            st = self._local.inputs = _ThreadInputs(*_input_buffers(arrays, self.device))
            return st
        for v, a in zip(st.views, arrays):
            v[...] = a
        return st

    # --- running --------------------------------------------------------------------------------
    def run(self, *inputs: Any, **named: Any) -> list[np.ndarray]:
        """Run on numpy inputs (positional, a dict, or keywords by input name); outputs as numpy.

        Every output is its own array. From a thread's second call on, where the build has the
        allocation-free entry, a call goes through this thread's own :class:`PreparedRun` (no
        allocation, no VM tensor per call; ~0.5 us less on a LeNet) and the outputs are copied out
        of its buffers; otherwise ``main`` allocates the outputs anew per call (each returned as a
        DLPack view, no copy), and one that shares memory with an input buffer (an Identity, a
        Reshape of an input) is copied. The common call — the same shapes and dtypes as this
        thread's previous call, positional or one dict — skips the binder's checks."""
        loc = self._local
        pr: Any = getattr(loc, "bound", None)  # PreparedRun, False (not possible) or None
        if pr and not named:
            if _refill(inputs, self._names, pr._slots):
                pr._invoke(_BOUND)
                return [o.copy() for o in pr.outputs]
        elif pr is None:
            self._bound_next_call(loc)
        st: _ThreadInputs | None = getattr(loc, "inputs", None)
        if (
            st is not None
            and st.slots is not None
            and not named
            and _refill(inputs, self._names, st.slots)
        ):
            return self._finish(st, self._thread_main(loc)(*st.tensors))
        st = self._bind_state(inputs, named)
        return self._finish(st, self._thread_main(loc)(*st.tensors))

    __call__ = run

    def _thread_main(self, loc: threading.local) -> Any:
        """This thread's ``main``: a Relax VM keeps its register frames in the VM object, so two
        threads calling one VM's function at once corrupt each other's frames (seen: a crash, a
        register index out of range) — each thread gets its own VM on its first call."""
        main = getattr(loc, "main", None)
        if main is None:
            main = loc.main = relax.VirtualMachine(self.executable, self.device)["main"]
        return main

    def _bound_next_call(self, loc: threading.local) -> None:
        """On a thread's second call, give it a :class:`PreparedRun` for the following ones where
        the build has the allocation-free entry and every input a numpy view (``loc.bound``; False
        where not: the VM's ``main`` is used)."""
        if not getattr(loc, "called", False):
            loc.called = True
            return
        loc.bound = False
        if not self.input_specs or any(
            not all(isinstance(d, int) for d in s) for _, s, _ in self.input_specs
        ):
            return
        try:
            pr = PreparedRun(self, (), {})
        except Exception:  # noqa: BLE001 - an optional fast path; `main` stays correct
            return
        if pr.allocation_free and not pr._copy_in:
            loc.bound = pr

    @staticmethod
    def _finish(st: _ThreadInputs, result: Any) -> list[np.ndarray]:
        outs = _outputs(result)
        alias = st.alias
        if alias is None:  # which outputs are (views of) an input buffer: fixed by the program
            alias = st.alias = tuple(
                any(v is None or np.may_share_memory(o, v) for v in st.views) for o in outs
            )
        if True in alias:  # it would change with the next call's input
            return [o.copy() if a else o for o, a in zip(outs, alias)]
        return outs

    def prepare(self, *example: Any, **named: Any) -> PreparedRun:
        """A call bound to its own input and output buffers, for the least overhead per call
        (see :class:`PreparedRun`). ``example`` inputs (like :meth:`run`'s) fill the input buffers
        (zeros without them); they are needed only when the input specs are unknown (a library
        loaded without them). Preparing runs the model two or three times (it checks that the
        outputs stay in their buffers): prepare once, call many times."""
        return PreparedRun(self, example, named)

    def benchmark(
        self,
        inputs: Sequence[Any] | Mapping[str, Any],
        number: int = 10,
        repeat: int = 3,
        min_repeat_ms: int = 0,
    ) -> dict[str, float]:
        """Latency of one run in ms over ``repeat`` measurements of ``number`` runs each (after a
        warm-up run), from the VM's ``time_evaluator``."""
        args = self._bind([inputs] if isinstance(inputs, Mapping) else list(inputs), {})
        timer = self._vm.time_evaluator(
            "main", self.device, number=number, repeat=repeat, min_repeat_ms=min_repeat_ms
        )
        res = np.asarray(timer(*args).results, dtype=np.float64) * 1e3
        return {
            "median_ms": float(np.median(res)),
            "mean_ms": float(res.mean()),
            "std_ms": float(res.std()),
            "min_ms": float(res.min()),
        }

    def profile(
        self, inputs: Sequence[Any] | Mapping[str, Any], repeat: int = 3
    ) -> list[dict[str, Any]]:
        """Per-call timing of one run: ``[{"name", "ms", "shapes"}, ...]`` in call order (the
        minimum over ``repeat`` runs after a warm-up; ``shapes`` are the call's tensor argument
        shapes, output last). Wall time measured around each VM call instruction, so it includes
        the call overhead (~1-5 us)."""
        import time

        args = self._bind([inputs] if isinstance(inputs, Mapping) else list(inputs), {})
        vm = relax.VirtualMachine(self.executable, self.device)
        runs: list[list[dict[str, Any]]] = [[]]
        state: dict[str, Any] = {}

        def instrument(func: Any, symbol: str, before: bool, ret: Any, *call_args: Any) -> int:
            if before:
                state["t"] = time.perf_counter()
            else:
                ms = (time.perf_counter() - state["t"]) * 1e3
                shapes = [tuple(a.shape) for a in call_args if hasattr(a, "shape")]
                runs[-1].append({"name": str(symbol), "ms": ms, "shapes": shapes})
            return 0

        vm.set_instrument(instrument)
        vm["main"](*args)  # warm-up
        for _ in range(max(1, repeat)):
            runs.append([])
            vm["main"](*args)
        runs = runs[1:]
        best = runs[0]
        for r in runs[1:]:
            for rec, other in zip(best, r):
                rec["ms"] = min(rec["ms"], other["ms"])
        return best

    # --- export ---------------------------------------------------------------------------------
    def export_library(self, path: str | os.PathLike[str]) -> Path:
        """Write a shared library loadable with :func:`load_library` (atomically: temp + rename);
        TVM links it with the host C++ compiler (a one-line TargetError when there is none)."""
        from mcopt.targets.toolchain import HOST_CXX, require_compiler

        require_compiler(HOST_CXX, "exporting the compiled library")
        return self._export_atomic(path, "library", _first_line)

    def __repr__(self) -> str:
        ins = ", ".join(f"{n}: {d}{list(s)}" for n, s, d in self.input_specs)
        return f"CompiledModel(target={self.target!r}, pipeline={self.pipeline!r}, inputs=[{ins}])"


class PreparedRun:
    """A :class:`CompiledModel` call bound to its own buffers: from :meth:`CompiledModel.prepare`.

    ``prepared(x)`` copies ``x`` into the bound input buffer and runs; ``prepared()`` runs on
    what the buffers hold (write into ``prepared.inputs[i]`` in place to skip even that copy).
    Inputs are positional, one dict or keywords, as for :meth:`CompiledModel.run`; arrays of the
    buffers' shape and dtype are copied in unchecked, anything else goes through the binder's checks.

    Results are ``prepared.outputs``: the *same* arrays on every call, overwritten by the next call
    (``.copy()`` what you keep). Where the build has the allocation-free entry
    (``allocation_free``: every buffer of the model, outputs included, allocated once —
    :mod:`mcopt.targets.relax.static_memory`), a call is one VM call that allocates nothing and
    converts nothing; otherwise (a library built before it, a model that allocates nothing) it calls
    ``main`` and returns fresh arrays, valid until the next call or until an input buffer they
    alias is written.

    Each PreparedRun has its own VM and buffers: use one per thread (calls on one PreparedRun must
    not overlap).
    """

    __slots__ = (
        "allocation_free", "inputs", "outputs",
        "_args", "_call", "_copy_in", "_invoke", "_names", "_slots", "_specs", "_tensors", "_vm",
    )  # fmt: skip

    def __init__(self, model: CompiledModel, example: Sequence[Any], named: Mapping[str, Any]):
        from mcopt.targets.relax.static_memory import BOUND, BOUND_ALLOC
        from mcopt.targets.runtime import bind_inputs

        if example or named:
            arrays = bind_inputs(model.input_specs, example, named)
        elif model.input_specs:
            arrays = [np.zeros(s, d) for _, s, d in model.input_specs]
        else:
            raise TargetError(
                "prepare() needs example inputs: this model's input shapes are unknown"
            )
        self._specs = model.input_specs or [
            (f"input{i}", a.shape, str(a.dtype)) for i, a in enumerate(arrays)
        ]
        self._names = [n for n, _, _ in self._specs]
        self._vm = vm = relax.VirtualMachine(model.executable, model.device)
        self._tensors, views = _input_buffers(arrays, model.device)
        #: numpy views of the input buffers (plain arrays copied in per call where no view exists)
        self.inputs = [v if v is not None else a.copy() for v, a in zip(views, arrays)]
        self._copy_in = [(t, a) for t, v, a in zip(self._tensors, views, self.inputs) if v is None]
        self._slots = [(v, v.shape, v.dtype) for v in self.inputs]  # what a fast fill checks
        self._invoke: Any = None
        self._call = vm["main"]
        #: True when calls go to the allocation-free entry (results in fixed output buffers)
        self.allocation_free = False
        #: the results of the last call (with ``allocation_free``: the output buffers themselves)
        self.outputs: list[np.ndarray] = []
        bound = _vm_function(vm, BOUND)
        if bound is not None:
            args = [*self._tensors, *_vm_function(vm, BOUND_ALLOC)()]
            first = _to_numpy(bound(*args))
            self.outputs = _to_numpy(bound(*args))  # while `first` lives: a fresh output moves
            if [o.__array_interface__["data"] for o in first] == [
                o.__array_interface__["data"] for o in self.outputs
            ]:
                vm.set_input(BOUND, *args)  # bound by reference: refilled buffers are seen
                self._invoke = vm.module["invoke_stateful"]
                self.allocation_free = True
                self._args = args
        if not self.allocation_free:
            self.outputs = _outputs(self._call(*self._tensors))

    def __call__(self, *args: Any, **named: Any) -> list[np.ndarray]:
        if (args or named) and (named or not _refill(args, self._names, self._slots)):
            self._fill_checked(args, named)
        if self._copy_in:
            for t, a in self._copy_in:
                t.copyfrom(a)
        if self._invoke is not None:
            self._invoke(_BOUND)
            return list(self.outputs)
        self.outputs = _outputs(self._call(*self._tensors))
        return list(self.outputs)

    def _fill_checked(self, args: Sequence[Any], named: Mapping[str, Any]) -> None:
        from mcopt.errors import ShapeError
        from mcopt.targets.runtime import bind_inputs

        arrays = bind_inputs(self._specs, args, named)
        for a, v, (name, _, _) in zip(arrays, self.inputs, self._specs):
            if a.shape != v.shape:
                raise ShapeError(
                    f"input {name!r}: this PreparedRun's buffer has shape {list(v.shape)}, "
                    f"got {list(a.shape)} (prepare() another)"
                )
            v[...] = a

    def __repr__(self) -> str:
        return f"PreparedRun(allocation_free={self.allocation_free}, inputs={len(self.inputs)})"


def _vm_function(vm: Any, name: str) -> Any:
    """``vm[name]``, or None when the executable has no such function."""
    try:
        return vm[name]
    except (AttributeError, KeyError, RuntimeError):
        return None


def load_library(
    path: str | os.PathLike[str],
    input_specs: Sequence[tuple[str, tuple[int, ...], str]] = (),
    target: str = "cpu",
) -> CompiledModel:
    """Load a library written by :meth:`CompiledModel.export_library` into this process."""
    try:
        lib = tvm.runtime.load_module(str(path))
    except Exception as e:
        raise TargetError(f"cannot load compiled library {str(path)!r}: {_first_line(e)}") from None
    return CompiledModel(lib, target, input_specs, pipeline="loaded")


def mcopt_pipeline(spec: TargetSpec) -> tvm.transform.Pass:
    """Fusion + the default CPU schedule (see the module docstring)."""
    from mcopt.targets.cpu.schedule import cpu_schedule_pass
    from mcopt.targets.tune.space import template_schedule_pass

    return tvm.transform.Sequential(
        [
            # exp / tanh / erf (softmax, GELU, ELU, softplus, ...) as vector polynomials (TVM's
            # fast_exp / fast_tanh / fast_erf, float32; others untouched) instead of one libm
            # call per lane; sigmoid and SiLU are lowered to the same forms (fast_math.py)
            relax.transform.FastMathTransform(),
            relax.transform.LegalizeOps(),
            relax.transform.AnnotateTIROpPattern(),
            relax.transform.FoldConstant(),
            relax.transform.FuseOps(),
            relax.transform.FuseTIR(),
            relax.transform.DeadCodeElimination(),
            template_schedule_pass(),  # the kernel templates not scheduled from a database
            cpu_schedule_pass(spec.vector_lanes(32), spec.num_cores),
        ],
        name="mcopt_cpu",
    )


def compile_module(mod: tvm.IRModule, spec: TargetSpec, pipeline: str = "mcopt") -> Any:
    """Run ``pipeline`` on a Relax module and compile it for ``spec``; returns the executable."""
    if pipeline not in PIPELINES:
        raise TargetError(f"unknown pipeline {pipeline!r}; valid: {', '.join(PIPELINES)}")
    target = spec.tvm_target()
    try:
        if pipeline in ("mcopt", "mcopt-plain"):
            with target:
                mod = mcopt_pipeline(spec)(mod)
        ex = tvm.compile(mod, target=target, relax_pipeline=relax_build_pipeline(target))
    except Exception as e:
        raise TargetError(f"TVM build for target {spec.name!r} failed: {_first_line(e)}") from None
    if _is_cross(target):  # its object code is generated later (export): refuse what LLVM cannot
        from mcopt.targets.arm.codegen_guard import check_llvm_ir

        check_llvm_ir(ex, target, spec.name)
    return ex


def relax_build_pipeline(target: tvm.target.Target) -> Any:
    """The Relax pipeline ``tvm.compile`` runs for ``target``: TVM's default one, plus the
    allocation-free ``main_bound`` (:mod:`mcopt.targets.relax.static_memory`) on llvm targets."""
    if str(target.kind.name) != "llvm":
        return "default"
    from mcopt.targets.relax.static_memory import build_pipeline

    return build_pipeline()


def _is_cross(target: tvm.target.Target) -> bool:
    """An llvm target for another architecture than this host's (its ``mtriple``)."""
    if str(target.kind.name) != "llvm":
        return False
    attrs = target.attrs if target.attrs is not None else {}
    triple = str(attrs.get("mtriple", "") or "")
    if not triple:
        return False
    from tvm.target.codegen import llvm_get_system_triple

    return triple.split("-", 1)[0] != str(llvm_get_system_triple()).split("-", 1)[0]


def lower_for(graph: Graph, spec: TargetSpec, pipeline: str = "mcopt") -> tvm.IRModule:
    """The Relax module ``pipeline`` starts from: the planned kernel lowering for ``"mcopt"`` on
    llvm targets, the plain lowering otherwise."""
    if pipeline == "mcopt" and spec.kind == "llvm":
        from mcopt.targets.cpu.lower_planned import lower_planned

        return lower_planned(plan_for(graph, spec), spec.tvm_target())
    return lower(graph)


def plan_for(graph: Graph, spec: TargetSpec) -> Graph:
    """The planned graph the default (``"mcopt"``) build of an llvm ``spec`` lowers
    (:func:`mcopt.targets.cpu.planning.plan_cpu`): fusion, layouts and kernel choices in the IR."""
    from mcopt.targets.cpu.planning import plan_cpu

    return plan_cpu(graph, spec.tvm_target())


def build(
    graph: Graph, target: str | TargetSpec = "cpu", *, pipeline: str = "mcopt"
) -> CompiledModel:
    """Compile ``graph`` for ``target``; lowering or build failures are one-line TargetErrors."""
    spec = get_target(target)
    if not spec.host_runnable:
        raise TargetError(
            f"target {spec.name!r} cannot run in this process; use its own build path"
        )
    planned = plan_for(graph, spec) if pipeline == "mcopt" and spec.kind == "llvm" else None
    mod = lower_for(planned or graph, spec, pipeline)
    choices = lowering_choices(mod)
    ex = compile_module(mod, spec, pipeline)
    specs = [(v.name, tuple(v.shape), v.dtype) for v in graph.inputs]
    model = CompiledModel(ex, spec.name, specs, [v.name for v in graph.outputs], pipeline)
    model.choices = choices
    model.planned = planned
    return model


def lowering_choices(mod: tvm.IRModule) -> dict[str, int]:
    """What the planned lowering chose per layer where it had a choice (``{"3x3 conv: Winograd
    F(4x4,3x3)": 6, ...}``), from the module attribute it leaves; empty for other lowerings."""
    attrs = mod.attrs
    if attrs is None or "mcopt.choices" not in attrs:
        return {}
    return {str(k): int(v) for k, v in attrs["mcopt.choices"].items()}


__all__ = [
    "PIPELINES",
    "CompiledModel",
    "PreparedRun",
    "build",
    "compile_module",
    "load_library",
    "lowering_choices",
    "lower_for",
    "plan_for",
    "mcopt_pipeline",
]
