"""Convolution factorizations (compressed architectures of the seed lecture), each a lossy pass.

Every pass replaces a ``conv2d`` (weight W: (O, C/g, kh, kw), groups g handled group by group) by a
short chain of cheaper convolutions whose composition approximates W:

==========================  ===========================================================  ===================
pass                        structure (rank r)                                           decomposition
==========================  ===========================================================  ===================
``factorize-spatial``       kh x 1 (C -> r), then 1 x kw (r -> O)                        SVD over spatial axes
``factorize-5x5``           5x5 -> 3x3 (C -> r), then 3x3 (r -> O)                       alternating least sq.
``factorize-flattened``     1x1 (C -> O*r), kh x 1 and 1 x kw per channel (Jin et al.)   per-filter CP (ALS)
``factorize-depthwise``     depthwise kh x kw (multiplier r), then pointwise 1x1         per-channel SVD
``factorize-tucker``        1x1 reduce (C -> r), kh x kw (r -> r), 1x1 expand (r -> O)   Tucker-2 (HOSVD+HOOI)
==========================  ===========================================================  ===================

Rank: ``rank`` fixes it; ``param_ratio`` fixes each layer's compression instead (the largest rank
whose factorized layer keeps at most that fraction of the layer's parameters, no error search: for
random-weight models, whose flat spectra defeat any error budget); otherwise it is chosen per layer (see :mod:`mcopt.analysis.lowrank`) as the
smallest rank whose layer-output relative error on calibration activations (``ctx.calib``) is at most
``max_rel_error`` or, without calibration data (or with ``max_rel_error=None``), that keeps ``energy`` of
the weights' spectral energy -- among the ranks that remove at least ``min_saving`` of the layer's
parameters (a layer that needs more is left alone and listed in the report's ``skipped``). With
calibration data the mean output shift of the approximation is folded into the last bias (bias
correction). Each pass records per-layer params/MACs before and after and the error in
its :class:`~mcopt.pass_manager.PassSummary` (``ctx.summarize``: ``ctx.summary``, ranks and skipped
layers in the report) and, with calibration data, the end-to-end output error it introduced.

Exact cases: a kernel whose rank (in the sense of the method) is at most r is reproduced up to float
rounding, e.g. separable kernels ``W[o,c,i,j] = a[o,c,i] b[o,c,j]`` summed over <= r terms by
``factorize-spatial`` and any kernel by ``factorize-tucker`` at full rank.

Papers: Szegedy et al., "Rethinking the Inception Architecture" (CVPR 2016: n x n -> n x 1 + 1 x n,
5x5 -> two 3x3); Jaderberg et al., "Speeding up CNNs with Low Rank Expansions" (BMVC 2014); Jin et al.,
"Flattened CNNs for Feedforward Acceleration" (ICLR-W 2015); Chollet, "Xception" (CVPR 2017) /
Howard et al., MobileNets (2017); Kim et al., "Compression of Deep CNNs for Fast and Low Power Mobile
Applications" (ICLR 2016, Tucker-2); Szegedy et al., "Going Deeper with Convolutions" (1x1 reduce).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from mcopt.analysis.lowrank import (
    Capture,
    LayerRecord,
    bisect_rank,
    capture,
    format_record,
    layer_error,
    node_params,
    nodes_macs,
    output_rel_error,
    run_feeds,
    substitute,
    summarize,
    weight_error,
)
from mcopt.ir.core import Graph, Node, Value
from mcopt.pass_manager import Pass, PassContext, register_pass

Stage = tuple[np.ndarray, dict[str, Any]]  # (weight for all groups, conv2d attrs)


def _single_thread() -> AbstractContextManager[Any]:
    """Limit BLAS to one thread: the ALS loops solve thousands of tiny systems, for which OpenBLAS's
    thread start-up costs 10-30x the work on a loaded machine."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # optional (comes with scikit-learn)
        return nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


@dataclass
class Factorization:
    """The conv chain replacing one layer and the full weight it amounts to."""

    stages: list[Stage]
    w_hat: np.ndarray  # (O, C/g, kh, kw) float64


# --- per-group helpers ------------------------------------------------------------------------------------
def _svd(m: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return np.linalg.svd(m, full_matrices=False)


def _per_group(
    w: np.ndarray, groups: int, fn: Callable[[np.ndarray], tuple[list[np.ndarray], np.ndarray]]
) -> tuple[list[np.ndarray], np.ndarray]:
    """Apply `fn` (per-group weight -> (factors, approximation)) to each group; stack along axis 0."""
    og = w.shape[0] // groups
    outs = [fn(w[i * og : (i + 1) * og]) for i in range(groups)]
    factors = [np.concatenate([o[0][k] for o in outs], axis=0) for k in range(len(outs[0][0]))]
    return factors, np.concatenate([o[1] for o in outs], axis=0)


def _attrs(strides: Any, pads: Any, dilations: Any, groups: int) -> dict[str, Any]:
    return {
        "strides": tuple(strides),
        "pads": tuple(pads),
        "dilations": tuple(dilations),
        "groups": int(groups),
    }


# --- methods ------------------------------------------------------------------------------------------------
class _Method:
    """One factorization: applicability, rank range, parameter count, decomposition."""

    label: ClassVar[str] = ""

    def reason(self, w: np.ndarray, attrs: dict[str, Any]) -> str | None:
        return None

    def exact_rank(self, w: np.ndarray, g: int) -> int:
        raise NotImplementedError

    def params(self, w: np.ndarray, g: int, r: int) -> int:
        raise NotImplementedError

    def factor(
        self, w: np.ndarray, attrs: dict[str, Any], r: int, rng: np.random.Generator
    ) -> Factorization:
        raise NotImplementedError


class _Spatial(_Method):
    """M[(c,i),(o,j)] = W[o,c,i,j] = sum_k s_k u_k v_k^T: kh x 1 conv with sqrt(s) u, 1 x kw with sqrt(s) v."""

    label = "n x n -> n x 1 + 1 x n (spatial SVD)"

    def reason(self, w: np.ndarray, attrs: dict[str, Any]) -> str | None:
        return None if w.shape[2] > 1 and w.shape[3] > 1 else "kernel is already 1-D"

    def exact_rank(self, w: np.ndarray, g: int) -> int:
        o, c, kh, kw = w.shape
        return min(c * kh, (o // g) * kw)

    def params(self, w: np.ndarray, g: int, r: int) -> int:
        o, c, kh, kw = w.shape
        return g * r * c * kh + o * r * kw

    def factor(self, w, attrs, r, rng):  # type: ignore[no-untyped-def]
        o, c, kh, kw = w.shape
        g = attrs["groups"]

        def one(wg: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
            og = wg.shape[0]
            u, s, vt = _svd(wg.transpose(1, 2, 0, 3).reshape(c * kh, og * kw))
            rr = min(r, len(s))
            sq = np.sqrt(s[:rr])
            v1 = np.zeros((r, c, kh, 1))
            v1[:rr] = (u[:, :rr] * sq).T.reshape(rr, c, kh, 1)
            h = np.zeros((og, r, 1, kw))
            h[:, :rr] = (vt[:rr].T * sq).reshape(og, kw, rr).transpose(0, 2, 1)[:, :, None, :]
            approx = ((u[:, :rr] * s[:rr]) @ vt[:rr]).reshape(c, kh, og, kw).transpose(2, 0, 1, 3)
            return [v1, h], approx

        (v1, h), w_hat = _per_group(w, g, one)
        (sh, sw), (pt, pl, pb, pr), (dh, dw) = attrs["strides"], attrs["pads"], attrs["dilations"]
        return Factorization(
            [
                (v1, _attrs((sh, 1), (pt, 0, pb, 0), (dh, 1), g)),
                (h, _attrs((1, sw), (0, pl, 0, pr), (1, dw), g)),
            ],
            w_hat,
        )


class _Depthwise(_Method):
    """Per input channel c: W[:, c] (O x kh*kw) ~ P_c D_c, rank = depth multiplier."""

    label = "depthwise-separable (per-channel SVD)"

    def exact_rank(self, w: np.ndarray, g: int) -> int:
        o, _, kh, kw = w.shape
        return min(o // g, kh * kw)

    def reason(self, w: np.ndarray, attrs: dict[str, Any]) -> str | None:
        if w.shape[2] * w.shape[3] == 1:
            return "1x1 kernel has no spatial part"
        if w.shape[1] == 1:
            return "already depthwise"
        return None

    def params(self, w: np.ndarray, g: int, r: int) -> int:
        o, c, kh, kw = w.shape
        return g * c * r * kh * kw + o * c * r

    def factor(self, w, attrs, r, rng):  # type: ignore[no-untyped-def]
        o, c, kh, kw = w.shape
        g = attrs["groups"]

        def one(wg: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
            og = wg.shape[0]
            u, s, vt = _svd(wg.transpose(1, 0, 2, 3).reshape(c, og, kh * kw))  # batched over c
            rr = min(r, s.shape[1])
            sq = np.sqrt(s[:, :rr])
            d = np.zeros((c, r, kh * kw))
            d[:, :rr] = vt[:, :rr] * sq[:, :, None]
            p = np.zeros((og, c, r))
            p[:, :, :rr] = (u[:, :, :rr] * sq[:, None, :]).transpose(1, 0, 2)
            approx = np.einsum("ock,ckt->oct", p, d).reshape(og, c, kh, kw)
            return [d.reshape(c * r, 1, kh, kw), p.reshape(og, c * r, 1, 1)], approx

        (d, p), w_hat = _per_group(w, g, one)
        return Factorization(
            [
                (d, _attrs(attrs["strides"], attrs["pads"], attrs["dilations"], g * c)),
                (p, _attrs((1, 1), (0, 0, 0, 0), (1, 1), g)),
            ],
            w_hat,
        )


class _Tucker(_Method):
    """Tucker-2: W ~ core x_0 U_out x_1 U_in (HOSVD start, `iters` HOOI sweeps); 1x1 kernels: plain SVD."""

    label = "1x1 bottleneck (Tucker-2)"
    iters = 3

    def exact_rank(self, w: np.ndarray, g: int) -> int:
        return max(w.shape[0] // g, w.shape[1])

    def params(self, w: np.ndarray, g: int, r: int) -> int:
        o, c, kh, kw = w.shape
        ro, ri = min(r, o // g), min(r, c)
        if kh * kw == 1:
            return g * ri * c + o * ri
        return g * (ri * c + ro * ri * kh * kw) + o * ro

    def factor(self, w, attrs, r, rng):  # type: ignore[no-untyped-def]
        o, c, kh, kw = w.shape
        g = attrs["groups"]
        one_by_one = kh * kw == 1

        def one(wg: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
            og = wg.shape[0]
            if one_by_one:
                rr = min(r, og, c)
                u, s, vt = _svd(wg.reshape(og, c))
                red = np.zeros((rr, c))
                red[:] = s[:rr, None] * vt[:rr]
                exp = u[:, :rr]
                return [red.reshape(rr, c, 1, 1), exp.reshape(og, rr, 1, 1)], (exp @ red).reshape(
                    og, c, 1, 1
                )
            ro, ri = min(r, og), min(r, c)
            uo = _svd(wg.reshape(og, -1))[0][:, :ro]
            ui = _svd(wg.transpose(1, 0, 2, 3).reshape(c, -1))[0][:, :ri]
            for _ in range(self.iters):  # HOOI: alternate the two factor matrices
                t = np.einsum("ocij,cs->osij", wg, ui).reshape(og, -1)
                uo = _svd(t)[0][:, :ro]
                t = np.einsum("ocij,or->crij", wg, uo).reshape(c, -1)
                ui = _svd(t)[0][:, :ri]
            core = np.einsum("ocij,or,cs->rsij", wg, uo, ui, optimize=True)
            approx = np.einsum("rsij,or,cs->ocij", core, uo, ui, optimize=True)
            return [ui.T.reshape(ri, c, 1, 1), core, uo.reshape(og, ro, 1, 1)], approx

        factors, w_hat = _per_group(w, g, one)
        unit = _attrs((1, 1), (0, 0, 0, 0), (1, 1), g)
        if one_by_one:
            (sh, sw), pads = attrs["strides"], attrs["pads"]
            first = _attrs((sh, sw), pads, (1, 1), g)
            return Factorization([(factors[0], first), (factors[1], unit)], w_hat)
        core_attrs = _attrs(attrs["strides"], attrs["pads"], attrs["dilations"], g)
        return Factorization(
            [(factors[0], unit), (factors[1], core_attrs), (factors[2], unit)], w_hat
        )


def _compose_33(w2: np.ndarray, w1: np.ndarray) -> np.ndarray:
    """The 5x5 kernel of conv3x3(w1) followed by conv3x3(w2): (O,r,3,3) x (r,C,3,3) -> (O,C,5,5)."""
    out = np.zeros((w2.shape[0], w1.shape[1], 5, 5))
    for a in range(3):
        for b in range(3):
            out[:, :, a : a + 3, b : b + 3] += np.einsum("ok,kcij->ocij", w2[:, :, a, b], w1)
    return out


class _FiveToThree(_Method):
    """5x5 ~ conv3x3(w2) o conv3x3(w1) with r intermediate channels, by alternating least squares."""

    label = "5x5 -> 3x3 + 3x3 (ALS)"
    iters = 150
    restarts = 3
    tol = 1e-7

    def _als(
        self, k: np.ndarray, r: int, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray, float]:
        """One ALS run from a random start: (w1, w2, residual norm); stops when the relative
        improvement of the residual drops below `tol`."""
        og, c = k.shape[:2]
        kf = k.reshape(og, -1)  # (O, C*25)
        kt = k.transpose(0, 2, 3, 1).reshape(og * 25, c)  # rows (o,p,q), cols c
        scale = float(np.linalg.norm(k)) or 1.0
        w1 = rng.standard_normal((r, c, 3, 3)) / np.sqrt(c * 9)
        w2 = np.zeros((og, r, 3, 3))
        res = prev = np.inf
        for _ in range(self.iters):
            t1 = np.zeros((r, 3, 3, c, 5, 5))
            for a in range(3):
                for b in range(3):
                    t1[:, a, b, :, a : a + 3, b : b + 3] = w1
            t1 = t1.reshape(r * 9, c * 25)
            w2 = _ridge(t1.T, kf.T, scale).T.reshape(og, r, 3, 3)
            t2 = np.zeros((og, 5, 5, r, 3, 3))
            for s_ in range(3):
                for t_ in range(3):
                    t2[:, s_ : s_ + 3, t_ : t_ + 3, :, s_, t_] = w2.transpose(0, 2, 3, 1)
            t2 = t2.reshape(og * 25, r * 9)
            w1m = _ridge(t2, kt, scale)
            w1 = w1m.reshape(r, 3, 3, c).transpose(0, 3, 1, 2)
            res = float(np.linalg.norm(t2 @ w1m - kt))
            if prev - res < self.tol * prev:
                break
            prev = res
        return w1, w2, res

    def reason(self, w: np.ndarray, attrs: dict[str, Any]) -> str | None:
        if w.shape[2:] != (5, 5):
            return f"kernel {w.shape[2]}x{w.shape[3]} is not 5x5"
        return None if attrs["dilations"] == (1, 1) else "dilated kernel"

    def exact_rank(self, w: np.ndarray, g: int) -> int:
        return 25 * w.shape[1] * (w.shape[0] // g) // (9 * (w.shape[1] + w.shape[0] // g)) + 1

    def params(self, w: np.ndarray, g: int, r: int) -> int:
        o, c = w.shape[:2]
        return 9 * r * (g * c + o)

    def factor(self, w, attrs, r, rng):  # type: ignore[no-untyped-def]
        o, c = w.shape[:2]
        g = attrs["groups"]

        def one(k: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
            best: tuple[float, list[np.ndarray], np.ndarray] | None = None
            for _ in range(self.restarts):
                w1, w2, res = self._als(k, r, rng)
                if best is None or res < best[0]:
                    best = (res, [w1, w2], _compose_33(w2, w1))
                if res < 1e-9 * (float(np.linalg.norm(k)) or 1.0):
                    break
            assert best is not None
            return best[1], best[2]

        with _single_thread():
            (w1, w2), w_hat = _per_group(w, g, one)
        return Factorization(
            [
                (w1, _attrs((1, 1), attrs["pads"], (1, 1), g)),
                (w2, _attrs(attrs["strides"], (0, 0, 0, 0), (1, 1), g)),
            ],
            w_hat,
        )


def _ridge(a: np.ndarray, b: np.ndarray, scale: float, lam: float = 1e-12) -> np.ndarray:
    """argmin_x ||a x - b||^2 + lam*scale^2 ||x||^2 (normal equations; a tiny ridge for stability)."""
    ata = a.T @ a
    ata[np.diag_indices_from(ata)] += lam * (np.trace(ata) / max(1, ata.shape[0]) + scale**2)
    return np.linalg.solve(ata, a.T @ b)


class _Flattened(_Method):
    """Jin et al.: filter W[o] (C x kh x kw) ~ sum_{k<r} a_ok (x) b_ok (x) c_ok (per-filter CP, ALS)."""

    label = "flattened c x 1 x 1 + 1 x y x 1 + 1 x 1 x x (per-filter CP)"
    iters = 60

    def reason(self, w: np.ndarray, attrs: dict[str, Any]) -> str | None:
        return None if w.shape[2] > 1 and w.shape[3] > 1 else "kernel is already 1-D"

    def exact_rank(self, w: np.ndarray, g: int) -> int:
        _, c, kh, kw = w.shape
        return min(c * kh, c * kw, kh * kw)

    def params(self, w: np.ndarray, g: int, r: int) -> int:
        o, c, kh, kw = w.shape
        return o * r * (c + kh + kw)

    def factor(self, w, attrs, r, rng):  # type: ignore[no-untyped-def]
        o, c, kh, kw = w.shape
        g = attrs["groups"]

        def one(t: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
            og = t.shape[0]
            # start from the leading singular vectors of the per-filter unfoldings (deterministic)
            u, sv, vt = np.linalg.svd(t.reshape(og, c, kh * kw), full_matrices=False)
            kk = min(r, sv.shape[1])
            a = rng.standard_normal((og, r, c)) * 1e-3
            bv = rng.standard_normal((og, r, kh))
            cv = rng.standard_normal((og, r, kw))
            a[:, :kk] = u[:, :, :kk].transpose(0, 2, 1) * sv[:, :kk, None]
            ub, sb, vb = np.linalg.svd(vt[:, :kk].reshape(og, kk, kh, kw), full_matrices=False)
            bv[:, :kk] = ub[..., 0] * sb[..., :1]
            cv[:, :kk] = vb[..., 0, :]
            eye = np.eye(r)[None]
            for _ in range(self.iters):
                gram = np.einsum("ori,osi->ors", bv, bv) * np.einsum("orj,osj->ors", cv, cv)
                rhs = np.einsum("ocij,ori,orj->orc", t, bv, cv, optimize=True)
                a = np.linalg.solve(gram + 1e-12 * eye, rhs)
                gram = np.einsum("orc,osc->ors", a, a) * np.einsum("orj,osj->ors", cv, cv)
                rhs = np.einsum("ocij,orc,orj->ori", t, a, cv, optimize=True)
                bv = np.linalg.solve(gram + 1e-12 * eye, rhs)
                gram = np.einsum("orc,osc->ors", a, a) * np.einsum("ori,osi->ors", bv, bv)
                rhs = np.einsum("ocij,orc,ori->orj", t, a, bv, optimize=True)
                cv = np.linalg.solve(gram + 1e-12 * eye, rhs)
            approx = np.einsum("orc,ori,orj->ocij", a, bv, cv, optimize=True)
            return [
                a.reshape(og * r, c, 1, 1),
                bv.reshape(og * r, 1, kh, 1),
                cv.reshape(og, r, 1, kw),
            ], approx

        with _single_thread():
            (lat, ver, hor), w_hat = _per_group(w, g, one)
        (sh, sw), (pt, pl, pb, pr), (dh, dw) = attrs["strides"], attrs["pads"], attrs["dilations"]
        return Factorization(
            [
                (lat, _attrs((1, 1), (0, 0, 0, 0), (1, 1), g)),
                (ver, _attrs((sh, 1), (pt, 0, pb, 0), (dh, 1), o * r)),
                (hor, _attrs((1, sw), (0, pl, 0, pr), (1, dw), o)),
            ],
            w_hat,
        )


# --- the passes ----------------------------------------------------------------------------------------------
class ConvFactorizePass(Pass):
    """Base of the factorization passes (not registered): rank selection, rewriting, reporting."""

    method: ClassVar[_Method]
    rank: int | None = None
    energy: float = 0.95
    max_rel_error: float | None = 0.05
    layers: tuple[str, ...] = ()
    min_saving: float = 0.1
    calib_samples: int = 8
    max_columns: int = 2048
    param_ratio: float | None = None

    def __post_init__(self) -> None:
        if self.rank is not None and self.rank < 1:
            raise ValueError(f"rank must be >= 1, got {self.rank}")
        if self.param_ratio is not None and not 0.0 < self.param_ratio <= 1.0:
            raise ValueError(f"param_ratio must be in (0, 1], got {self.param_ratio}")
        if not 0.0 < self.energy <= 1.0:
            raise ValueError(f"energy must be in (0, 1], got {self.energy}")
        if not 0.0 <= self.min_saving < 1.0:
            raise ValueError(f"min_saving must be in [0, 1), got {self.min_saving}")

    def reason(self, node: Node) -> str | None:
        if node.op != "conv2d":
            return f"op {node.op} is not conv2d"
        w = node.inputs[1]
        assert w is not None
        if not w.is_const or w.type.encoding is not None:
            return "weight is not a plain constant"
        if not np.issubdtype(np.dtype(w.dtype), np.floating):
            return f"weight dtype {w.dtype} is not floating point"
        return self.method.reason(w.const, node.attrs)

    def run(self, graph: Graph, ctx: PassContext) -> bool:
        skipped: dict[str, str] = {}
        targets: list[Node] = []
        for node in graph.nodes:
            if node.op != "conv2d" or (self.layers and node.name not in self.layers):
                continue
            why = self.reason(node)
            if why is None:
                targets.append(node)
            else:
                skipped[node.name] = why
        feeds = ctx.feeds(self.calib_samples)
        cap: Capture | None = None
        if targets and feeds:
            cap = capture(
                graph, targets, feeds, max_columns=self.max_columns, rng=ctx.rng(len(targets))
            )
        records: list[LayerRecord] = []
        for i, node in enumerate(targets):
            rec = self._rewrite(graph, node, cap, ctx.rng(1000 + i), skipped)
            if rec is not None:
                records.append(rec)
                ctx.info(f"{self.name}: {format_record(rec)}")
        out_err = None
        if cap is not None and records:
            out_err = output_rel_error(cap.outputs, run_feeds(graph, cap.feeds))
            ctx.info(
                f"{self.name}: output rel error on {len(cap.feeds)} calibration feed(s): {out_err:.3g}"
            )
        ctx.summarize(summarize(records, lossless=False, output_rel_error=out_err, skipped=skipped))
        return bool(records)

    def _rewrite(
        self,
        graph: Graph,
        node: Node,
        cap: Capture | None,
        rng: np.random.Generator,
        skipped: dict[str, str],
    ) -> LayerRecord | None:
        x, wv = node.inputs[0], node.inputs[1]
        assert x is not None and wv is not None and wv.const is not None
        bv = node.inputs[2] if len(node.inputs) > 2 else None
        w = wv.const.astype(np.float64)
        b = None if bv is None or bv.const is None else bv.const
        g = int(node.attrs["groups"])
        p0 = w.size
        m = self.method
        exact = m.exact_rank(w, g)
        cache: dict[int, Factorization] = {}

        def fac(r: int) -> Factorization:
            if r not in cache:
                cache[r] = m.factor(w, node.attrs, r, rng)
            return cache[r]

        cols = None if cap is None else cap.columns.get(node.name)

        def err(r: int) -> float:
            if cols is not None:
                return layer_error(w, b, fac(r).w_hat, cols)[0]
            return weight_error(w, fac(r).w_hat)

        use_calib = cols is not None and self.max_rel_error is not None
        kind = "calib" if cols is not None else "weights"
        if self.rank is not None:
            r = min(self.rank, exact)
        elif self.param_ratio is not None:  # fixed compression: largest rank within the ratio
            r = max(
                (c for c in range(1, exact + 1) if m.params(w, g, c) <= self.param_ratio * p0),
                default=0,
            )
            if r == 0:
                skipped[node.name] = (
                    f"rank 1 keeps {m.params(w, g, 1) / p0:.0%} of {p0} params > "
                    f"param_ratio={self.param_ratio}"
                )
                return None
        else:
            r_max = 0
            for cand in range(1, exact + 1):
                if m.params(w, g, cand) <= (1.0 - self.min_saving) * p0:
                    r_max = cand
            if r_max == 0:
                skipped[node.name] = f"no rank saves {self.min_saving:.0%} of {p0} params"
                return None
            budget = float(self.max_rel_error) if use_calib else float(np.sqrt(1.0 - self.energy))
            found, tried = bisect_rank(err, 1, r_max, budget)
            if found is None:
                skipped[node.name] = (
                    f"rank {r_max} (the largest that saves {self.min_saving:.0%}) has "
                    f"{'layer output' if use_calib else 'weight'} rel error {tried[r_max]:.3g} > {budget:.3g}"
                )
                return None
            r = found
        f = fac(r)
        e = err(r)
        shift = layer_error(w, b, f.w_hat, cols)[1] if cols is not None else None
        new_nodes = self._build(graph, node, x, f, b, bv, shift)
        rec = LayerRecord(
            layer=node.name,
            method=m.label,
            rank=r,
            params_before=node_params([node]),
            params_after=node_params(new_nodes),
            macs_before=nodes_macs([node]),
            macs_after=nodes_macs(new_nodes),
            rel_error=e,
            error_kind=kind,
        )
        substitute(graph, node, new_nodes[-1].output)
        return rec

    def _build(
        self,
        graph: Graph,
        node: Node,
        x: Value,
        f: Factorization,
        b: np.ndarray | None,
        bv: Value | None,
        shift: np.ndarray | None,
    ) -> list[Node]:
        dtype = node.output.dtype
        cur = x
        nodes: list[Node] = []
        for k, (wk, attrs) in enumerate(f.stages):
            last = k == len(f.stages) - 1
            ins: list[Value | None] = [
                cur,
                graph.const(wk.astype(dtype), name=f"{node.name}_f{k}_w"),
            ]
            if last:
                if shift is not None and np.any(shift):
                    base = np.zeros(wk.shape[0]) if b is None else b.astype(np.float64)
                    ins.append(
                        graph.const((base + shift).astype(dtype), name=f"{node.name}_f{k}_b")
                    )
                else:
                    ins.append(bv)
            n = graph.add_node("conv2d", ins, attrs, name=f"{node.name}_f{k}", before=node)
            nodes.append(n)
            cur = n.output
        return nodes


@register_pass
class FactorizeSpatial(ConvFactorizePass):
    """Asymmetric factorization n x n -> n x 1 then 1 x n (Inception v2). Jaderberg, Vedaldi & Zisserman 2014.

    Method: SVD of the filter bank unfolded over the spatial axes, ``M[(c,i),(o,j)] = W[o,c,i,j]``,
    truncated to rank r: an (n x 1, C -> r) conv with ``sqrt(s) u`` and a (1 x n, r -> O) conv with
    ``sqrt(s) v``; params ``r n (C + O)`` instead of ``O C n^2``. Exact when M has rank <= r (separable
    kernels). Lossy in general; rank per layer from the error budget (see module doc)."""

    name = "factorize-spatial"
    method = _Spatial()


@register_pass
class FactorizeFiveByFive(ConvFactorizePass):
    """5x5 -> two stacked 3x3 convolutions (Inception v2). Szegedy, Vanhoucke et al., CVPR 2016.

    Method: the composition of 3x3 convs w1 (C -> r) and w2 (r -> O) is a 5x5 kernel
    ``K = sum_k w2[:,k] * w1[k]`` (full 2-D convolution of the 3x3 taps); w1, w2 are fitted to W by
    alternating least squares (each half-step is linear least squares). Params ``9 r (C + O)`` instead
    of ``25 O C``. Lossy (exact only when W is such a composition and ALS finds it)."""

    name = "factorize-5x5"
    method = _FiveToThree()


@register_pass
class FactorizeFlattened(ConvFactorizePass):
    """Flattened convolutions: c x 1 x 1, then 1 x y x 1, then 1 x 1 x x. Jin, Dundar & Culurciello, ICLR-W 2015.

    Method: each filter ``W[o] (C x kh x kw) ~ sum_{k<r} a_ok (x) b_ok (x) c_ok`` by CP decomposition
    (ALS, batched over filters); lowered as a 1x1 conv C -> O*r, a depthwise kh x 1 conv, and a
    grouped 1 x kw conv summing the r terms of each filter. r=1 is Jin et al.'s flattened layer
    (params ``O (C + kh + kw)``). Lossy."""

    name = "factorize-flattened"
    method = _Flattened()


@register_pass
class FactorizeDepthwise(ConvFactorizePass):
    """Depthwise-separable approximation of a full conv (Xception / MobileNet).

    Method: for each input channel c the slice ``W[:, c] (O x kh*kw)`` is truncated by SVD to rank r
    (the depth multiplier): a depthwise kh x kw conv with multiplier r, then a pointwise 1x1 conv.
    Params ``C r kh kw + O C r`` instead of ``O C kh kw``. Exact when every slice has rank <= r. Lossy."""

    name = "factorize-depthwise"
    method = _Depthwise()


@register_pass
class FactorizeTucker(ConvFactorizePass):
    """1x1 bottleneck by Tucker-2 decomposition (GoogLeNet's 1x1 reduce). Kim, Park et al., ICLR 2016.

    Method: ``W ~ core x_out U_out x_in U_in`` (HOSVD, refined by HOOI): a 1x1 conv C -> r (U_in^T),
    the kh x kw core conv r -> r, a 1x1 conv r -> O (U_out). Params ``r C + r^2 kh kw + O r``. A 1x1
    conv becomes two 1x1 convs (truncated SVD). Exact at full rank / multilinear rank <= r. Lossy."""

    name = "factorize-tucker"
    method = _Tucker()


__all__ = [
    "ConvFactorizePass",
    "FactorizeDepthwise",
    "FactorizeFiveByFive",
    "FactorizeFlattened",
    "FactorizeSpatial",
    "FactorizeTucker",
    "Factorization",
]
