"""The ONNX backend test data shipped in the onnx wheel, through mcopt's importer and interpreter.

Cases:

- every model of ``onnx/backend/test/data/{pytorch-converted,pytorch-operator,simple}`` (most in
  opset 6: they import only after ``onnx.version_converter`` upgraded them), each directory holding
  ``model.onnx`` and ``test_data_set_*/{input,output}_*.pb``;
- the single-node tests of ``onnx.backend.test.case.node`` for every op mcopt's importer handles
  (this wheel ships no ``data/node`` directory: the cases are generated in memory, ~5 s). Inputs
  that mcopt needs as constants (Reshape's shape, Clip's bounds, Pad's pads, Slice/Split/Squeeze/
  Unsqueeze/ReduceMean parameters, Tile's repeats, Dropout's ratio, Quantize/DequantizeLinear scales and zero
  points: ``PARAM_INPUTS``) are made initializers with the stored values, as they are in real
  CNNs; cases with sequence or optional inputs are left out.

Each case is imported with ``mcopt.api.load`` (input shapes from the test data), run on the stored
inputs with the reference interpreter and compared with the stored outputs. A case either matches
or, if it matches a pattern in ``REFUSED``, is refused by a one-line ``MCoptError`` subclass whose
message says why. Anything else fails the case: a wrong output, an exception that is not an
``MCoptError`` subclass (or the bare base class, which the interpreter uses for a crash inside an
op), a refusal that is not listed, a listed case that now matches (update the list), or a
multi-line message.
"""

from __future__ import annotations

import fnmatch
import functools
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import mcopt.api
import mcopt.interpreter
from mcopt.errors import MCoptError, ModelLoadError, UnsupportedOpError
from mcopt.onnx_io.import_ops import HANDLERS

DATA = Path(onnx.__file__).parent / "backend" / "test" / "data"
FILE_SUITES = ("pytorch-converted", "pytorch-operator", "simple")

#: node-test op types covered: everything the importer converts, plus what it folds, plus the
#: opset-24 ops spelled out before the downgrade to opset 21 (Swish)
NODE_OPS = frozenset(HANDLERS) | {"Constant", "Shape", "Size", "Swish"}
#: node input indices that mcopt needs as constants, per op type (made initializers for the test)
PARAM_INPUTS: dict[str, frozenset[int]] = {
    "Clip": frozenset({1, 2}),
    "DequantizeLinear": frozenset({1, 2}),
    "Dropout": frozenset({1, 2}),
    "Expand": frozenset({1}),
    "GroupNormalization": frozenset({1, 2}),
    "GRU": frozenset({4}),
    "LSTM": frozenset({4, 7}),
    "Pad": frozenset({1, 2, 3}),
    "QuantizeLinear": frozenset({1, 2}),
    "ReduceL1": frozenset({1}),
    "ReduceL2": frozenset({1}),
    "ReduceLogSum": frozenset({1}),
    "ReduceLogSumExp": frozenset({1}),
    "ReduceMax": frozenset({1}),
    "ReduceMean": frozenset({1}),
    "ReduceMin": frozenset({1}),
    "ReduceSum": frozenset({1}),
    "ReduceSumSquare": frozenset({1}),
    "Reshape": frozenset({1}),
    "Resize": frozenset({1, 2, 3}),
    "Slice": frozenset({1, 2, 3, 4}),
    "Split": frozenset({1}),
    "Squeeze": frozenset({1}),
    "Tile": frozenset({1}),
    "TopK": frozenset({1}),
    "Unsqueeze": frozenset({1}),
    "Upsample": frozenset({1}),
}

_NOT_SUPPORTED = "operator {} is not supported by mcopt"
#: the cases mcopt refuses, and why (the comments): (case-id pattern, error class, a fragment of
#: the one-line message). The first matching pattern (case-insensitive) applies; every pattern
#: must be the first match of some case.
REFUSED: list[tuple[str, type[MCoptError], str]] = [
    # LSTM peepholes (non-zero P): not imported
    ("node/test_lstm_with_peepholes", UnsupportedOpError, "peephole weights P"),
    # 3-D convolution and pooling: mcopt's IR has 1-D (lifted) and 2-D (NCHW) windows only
    ("pytorch-converted/test_AvgPool3d*", UnsupportedOpError, "3-D AveragePool"),
    ("pytorch-converted/test_MaxPool3d*", UnsupportedOpError, "3-D MaxPool"),
    ("pytorch-converted/test_Conv3d*", UnsupportedOpError, "3-D Conv"),
    ("node/test_averagepool_3d_*", UnsupportedOpError, "3-D AveragePool"),
    ("node/test_maxpool_3d_*", UnsupportedOpError, "3-D MaxPool"),
    ("node/test_convtranspose_1d", UnsupportedOpError, "1-D ConvTranspose"),
    ("node/test_convtranspose_3d", UnsupportedOpError, "3-D ConvTranspose"),
    # Resize: mcopt imports the nearest-neighbour upsampling by whole factors that repeats pixels
    ("node/test_resize_*_not_larger", UnsupportedOpError, "keep_aspect_ratio_policy"),
    ("node/test_resize_*_not_smaller", UnsupportedOpError, "keep_aspect_ratio_policy"),
    ("node/test_resize_*cubic*", UnsupportedOpError, "mode='cubic' is not supported"),
    ("node/test_resize_*linear*", UnsupportedOpError, "mode='linear' is not supported"),
    ("node/test_resize_tf_crop_and_resize*", UnsupportedOpError, "mode='linear' is not supported"),
    ("node/test_resize_downsample_*nearest*", UnsupportedOpError, "not whole spatial factors"),
    ("node/test_resize_upsample_sizes_nearest", UnsupportedOpError, "not whole spatial factors"),
    ("node/test_resize_upsample_sizes_nearest_axes_*", UnsupportedOpError, "not whole spatial"),
    ("node/test_resize_upsample_sizes_nearest_*", UnsupportedOpError, "does not repeat pixels"),
    # operators mcopt has no op for (not used by the CNNs it targets)
    ("simple/test_expand_shape_model*", UnsupportedOpError, "target shape (input 1 'shape') must"),
    ("simple/test_shrink", UnsupportedOpError, _NOT_SUPPORTED.format("Shrink")),
    ("simple/test_sequence_model*", UnsupportedOpError, "Sequence"),
    ("simple/test_gradient_*", UnsupportedOpError, "domain 'ai.onnx.preview.training'"),
    ("simple/test_strnorm_*", UnsupportedOpError, "element type object"),
    ("node/test_equal_string*", UnsupportedOpError, "element type object"),
    # forms of supported ops that mcopt does not import (inference graphs, 2-D windows)
    ("node/test_averagepool_2d_dilations", UnsupportedOpError, "with dilations"),
    ("node/test_batchnorm_*_training_mode", UnsupportedOpError, "training-mode"),
    ("node/test_*dropout*_mask*", UnsupportedOpError, "mask output of Dropout"),
    ("node/test_training_dropout*", UnsupportedOpError, "training_mode=true"),
    ("node/test_maxpool_with_argmax_*", UnsupportedOpError, "Indices output"),
    ("node/test_*quantizelinear_blocked*", UnsupportedOpError, "blocked quantization"),
    ("node/test_wrap_pad", UnsupportedOpError, "mode 'wrap' is not supported"),
    # element types mcopt does not hold (unsigned > 8 bit, bfloat16, float8, 4-bit ints)
    ("node/test_*_uint16", UnsupportedOpError, "element type uint16"),
    ("node/test_*_uint32", UnsupportedOpError, "element type uint32"),
    ("node/test_*_uint64", UnsupportedOpError, "element type uint64"),
    # opset-28 cases onnx.version_converter cannot bring down to opset 21 (mcopt's newest)
    ("node/test_celu_*float16", ModelLoadError, "unallowed for Opset Version"),
    ("node/test_spacetodepth_crd_mode_example", ModelLoadError, "must have value DCR"),
    # onnx.checker rejects the function body of this MeanVarianceNormalization (a Constant
    # without a value attribute) in the installed onnx
    ("node/test_mvn", ModelLoadError, "One and only one of the attributes"),
    ("node/test_*bfloat16*", UnsupportedOpError, "element type bfloat16"),
    ("node/test_*float8e[45]*", UnsupportedOpError, "element type float8_e"),
    ("node/test_*_e4m3fn*", UnsupportedOpError, "element type float8_e4m3fn"),
    ("node/test_*_e5m2*", UnsupportedOpError, "element type float8_e5m2"),
    ("node/test_*int4*", UnsupportedOpError, "int4, which mcopt does not support"),
    ("node/test_quantizelinear_int16", UnsupportedOpError, "QuantizeLinear to int16"),
    # opset > 21 is downgraded with onnx.version_converter, which refuses types opset 21 lacks
    # (float4, 2-bit ints, float8 e8m0) and has no 22 -> 21 adapter for GlobalMaxPool
    ("node/test_*float4e2m1*", ModelLoadError, "downgrading it to opset 21"),
    ("node/test_*_int2*", ModelLoadError, "downgrading it to opset 21"),
    ("node/test_*_uint2*", ModelLoadError, "downgrading it to opset 21"),
    ("node/test_*e8m0*", ModelLoadError, "downgrading it to opset 21"),
    ("node/test_globalmaxpool*", ModelLoadError, "No Adapter From Version $22"),
]


#: cases whose stored outputs are less precise than 1e-4 (case id -> relative tolerance)
TOLERANCE = {
    # onnx's generator writes the expected value rounded to 4 decimals (0.1511 for 0.151056)
    "node/test_averagepool_2d_ceil_last_window_starts_on_pad": 1e-3,
}


@dataclass(frozen=True)
class Case:
    """One backend test case: a model (file or in memory) and its data sets."""

    id: str
    model: Path | onnx.ModelProto
    data: Path | None = None  # directory with test_data_set_* (file cases)
    sets: tuple[tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...]], ...] = ()  # node cases

    def data_sets(self) -> list[tuple[list[np.ndarray], list[np.ndarray]]]:
        if self.data is None:
            return [(list(i), list(o)) for i, o in self.sets]
        return [
            (_read_pbs(d, "input"), _read_pbs(d, "output"))
            for d in sorted(self.data.glob("test_data_set_*"))
        ]


def _read_pbs(d: Path, kind: str) -> list[np.ndarray]:
    out = []
    for p in sorted(d.glob(f"{kind}_*.pb"), key=lambda q: int(q.stem.split("_")[-1])):
        t = onnx.TensorProto()
        t.ParseFromString(p.read_bytes())
        out.append(numpy_helper.to_array(t))
    return out


def _file_cases() -> list[Case]:
    return [
        Case(f"{suite}/{d.name}", d / "model.onnx", data=d)
        for suite in FILE_SUITES
        for d in sorted((DATA / suite).iterdir())
        if (d / "model.onnx").is_file()
    ]


def _tensor(a: object) -> np.ndarray | None:
    if isinstance(a, onnx.TensorProto):
        return numpy_helper.to_array(a)
    return np.asarray(a) if isinstance(a, np.ndarray | np.generic) else None


def _freeze_params(
    model: onnx.ModelProto, inputs: list[np.ndarray]
) -> tuple[onnx.ModelProto, list[np.ndarray]]:
    """Make the inputs listed in PARAM_INPUTS initializers holding their test values."""
    node = model.graph.node[0]
    params = {n for i, n in enumerate(node.input) if n and i in PARAM_INPUTS.get(node.op_type, ())}
    if not params:
        return model, inputs
    frozen = onnx.ModelProto()
    frozen.CopyFrom(model)
    keep_vi, keep_arrays = [], []
    for vi, arr in zip(model.graph.input, inputs):
        if vi.name in params:
            frozen.graph.initializer.append(numpy_helper.from_array(arr, vi.name))
        else:
            keep_vi.append(vi)
            keep_arrays.append(arr)
    del frozen.graph.input[:]
    frozen.graph.input.extend(keep_vi)
    return frozen, keep_arrays


@functools.cache
def _node_cases() -> tuple[Case, ...]:
    from onnx.backend.test.case import node as node_cases

    with warnings.catch_warnings():  # the generators overflow casts on purpose
        warnings.simplefilter("ignore")
        generated = node_cases.collect_testcases(None)
    cases = []
    for tc in generated:
        graph = tc.model.graph
        if "_expanded" in tc.name or len(graph.node) != 1 or graph.node[0].op_type not in NODE_OPS:
            continue
        sets = []
        for ins, outs in tc.data_sets:
            arrays_in = [_tensor(a) for a in ins]
            arrays_out = [_tensor(a) for a in outs]
            if any(a is None for a in arrays_in + arrays_out):  # sequence / optional values
                break
            model, arrays_in = _freeze_params(tc.model, arrays_in)  # type: ignore[arg-type]
            sets.append((tuple(arrays_in), tuple(arrays_out)))
        else:
            cases.append(Case(f"node/{tc.name}", model, sets=tuple(sets)))  # type: ignore[arg-type]
    return tuple(cases)


CASES: dict[str, Case] = {c.id: c for c in (*_file_cases(), *_node_cases())}


@dataclass(frozen=True)
class Outcome:
    """What mcopt did with a case: "match", "refused", "wrong" or "internal" (and the details)."""

    kind: str
    detail: str = ""
    error: BaseException | None = None
    upgraded_from: int | None = None


def _close(got: np.ndarray, want: np.ndarray, tol: float = 1e-4) -> str | None:
    """None when `got` matches `want` (`tol` x the output's magnitude for floats), else why not."""
    if got.shape != want.shape:
        return f"shape {list(got.shape)} != {list(want.shape)}"
    if got.dtype != want.dtype:
        return f"dtype {got.dtype} != {want.dtype}"
    if want.dtype.kind != "f":
        bad = int(np.sum(got != want))
        return f"{bad} of {want.size} values differ" if bad else None
    if not np.array_equal(np.isnan(got), np.isnan(want)):
        return "NaNs in different places"
    finite = np.isfinite(want)
    if not np.array_equal(got[~finite & ~np.isnan(want)], want[~finite & ~np.isnan(want)]):
        return "infinities differ"
    g, w = got[finite].astype(np.float64), want[finite].astype(np.float64)
    if not w.size:
        return None
    tol = max(tol, 1e-3) if want.dtype == np.float16 else tol
    scale = max(float(np.abs(w).max()), 1e-6)
    err = float(np.abs(g - w).max())
    return None if err <= tol * scale else f"max abs error {err:.3g} > {tol} x {scale:.3g}"


@functools.cache
def outcome(case_id: str) -> Outcome:
    """Import, run and compare one case (cached: the summary test reuses the results)."""
    case = CASES[case_id]
    data = case.data_sets()
    proto = case.model if isinstance(case.model, onnx.ModelProto) else onnx.load(case.model)
    inits = {t.name for t in proto.graph.initializer}
    names = [v.name for v in proto.graph.input if v.name not in inits]
    try:
        shapes = {n: list(a.shape) for n, a in zip(names, data[0][0])}
        graph = mcopt.api.load(case.model, input_shapes=shapes)
    except MCoptError as e:
        if type(e) is MCoptError:
            return Outcome("internal", f"bare MCoptError at import: {e}", e)
        return Outcome("refused", f"{type(e).__name__}: {e}", e)
    except Exception as e:
        return Outcome("internal", f"import raised {type(e).__name__}: {e}", e)
    upgraded = graph.metadata.get("upgraded_from_opset")
    for k, (ins, want) in enumerate(data):
        try:
            with np.errstate(all="ignore"):  # sqrt / pow of negative inputs: NaN is expected
                got = mcopt.interpreter.run(graph, dict(zip(names, ins)))
        except Exception as e:  # refusing at run time is an internal error too
            return Outcome("internal", f"run raised {type(e).__name__}: {e}", e, upgraded)
        if len(got) != len(want):
            return Outcome("wrong", f"{len(got)} outputs, expected {len(want)}", None, upgraded)
        for i, (g, w) in enumerate(zip(got, want)):
            why = _close(np.asarray(g), np.asarray(w), TOLERANCE.get(case_id, 1e-4))
            if why is not None:
                return Outcome("wrong", f"data set {k} output {i}: {why}", None, upgraded)
    return Outcome("match", "", None, upgraded)


def _matches(case_id: str, pattern: str) -> bool:
    """Case-insensitive glob (onnx names its type tests test_cast_FLOAT8E5M2_... and ..._e5m2)."""
    return fnmatch.fnmatchcase(case_id.lower(), pattern.lower())


def expected_refusal(case_id: str) -> tuple[type[MCoptError], str] | None:
    for pattern, cls, fragment in REFUSED:
        if _matches(case_id, pattern):
            return cls, fragment
    return None


@pytest.mark.parametrize("case_id", sorted(CASES))
def test_backend_case(case_id: str) -> None:
    res = outcome(case_id)
    assert res.kind in ("match", "refused"), f"{case_id}: {res.kind}: {res.detail}"
    expected = expected_refusal(case_id)
    if res.kind == "match":
        assert expected is None, f"{case_id} now matches: remove it from REFUSED"
        return
    assert res.error is not None
    msg = str(res.error)
    assert "\n" not in msg, f"{case_id}: refusal message is not one line: {msg!r}"
    assert expected is not None, f"{case_id} is refused but not listed in REFUSED: {res.detail}"
    cls, fragment = expected
    assert isinstance(res.error, cls), f"{case_id}: expected {cls.__name__}, got {res.detail}"
    assert fragment in msg, f"{case_id}: expected {fragment!r} in the message: {msg}"


#: matching cases measured with onnx 1.23.2 (of 82, 35, 23 and 362 cases; 0 wrong outputs)
MIN_MATCHES = {"pytorch-converted": 69, "pytorch-operator": 35, "simple": 2, "node": 550}
MIN_UPGRADED_MATCHES = 81  # matched cases whose model was in opset 6 (upgraded to 9 at import)


def test_backend_summary() -> None:
    results = {cid: outcome(cid) for cid in CASES}
    counts = Counter((cid.split("/")[0], r.kind) for cid, r in results.items())
    summary = ", ".join(f"{s}: {k} {n}" for (s, k), n in sorted(counts.items()))
    assert not [c for c, r in results.items() if r.kind in ("wrong", "internal")], summary
    for suite, least in MIN_MATCHES.items():
        assert counts[(suite, "match")] >= least, summary
    upgraded = sum(1 for r in results.values() if r.kind == "match" and r.upgraded_from)
    assert upgraded >= MIN_UPGRADED_MATCHES, f"{upgraded} upgraded matches; {summary}"


def test_refused_patterns_all_apply() -> None:
    """No stale entries: every REFUSED pattern is the first match of some case."""
    used = {next((p for p, _, _ in REFUSED if _matches(cid, p)), None) for cid in CASES}
    stale = [p for p, _, _ in REFUSED if p not in used]
    assert not stale, f"REFUSED patterns that match no case first: {stale}"
