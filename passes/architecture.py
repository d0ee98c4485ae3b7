"""Architecture rewrites of the classifier head: fully-connected -> global average pooling, low-rank FC.

* ``fc-to-gap`` (lossy): replaces a flatten + fully-connected head (AlexNet / VGG style:
  ``flatten -> dense -> relu -> dropout -> dense -> ... -> logits``) by global average pooling of the
  last feature map + one dense layer (Lin et al., "Network in Network", 2014; GoogLeNet). The new
  head is fitted to the original logits on calibration data: the student-teacher MSE objective of the
  seed (the teacher's pre-softmax outputs as regression targets, Ba & Caruana 2014), solved in closed
  form because the student head is linear: ridge regression ``min ||[phi, 1] [W b]^T - z||^2 +
  lam ||W||^2`` with ``phi = GAP(feature map)``, ``z`` = teacher logits.
* ``lowrank-dense`` (lossy): a dense layer ``W (out x in)`` becomes two thinner ones by truncated SVD,
  ``W ~ (U_r) (S_r V_r^T)`` (Denton et al., "Exploiting Linear Structure Within Convolutional Networks
  for Efficient Evaluation", NIPS 2014; Xue et al. 2013); rank from an error budget on calibration
  data or from the spectral energy (see :mod:`mcopt.analysis.lowrank`).
"""

from __future__ import annotations

import numpy as np

from mcopt.analysis.lowrank import (
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

#: ops allowed inside a classifier head replaced by ``fc-to-gap``
HEAD_OPS = frozenset(
    {
        "dense",
        "matmul",
        "add",
        "relu",
        "leaky_relu",
        "clip",
        "sigmoid",
        "tanh",
        "hard_swish",
        "silu",
        "gelu",
        "dropout",
        "identity",
        "batch_norm",
        "flatten",
        "reshape",
    }
)


def find_head(graph: Graph) -> tuple[Node, Value, list[Node]] | str:
    """(flatten node, logits value, head nodes) of a flatten + FC classifier head, or why there is none.

    The logits are the single graph output, or the input of a final softmax. The head is every node
    between the flatten (a reshape/flatten from a 4-D feature map to 2-D) and the logits; it must use
    nothing but the flattened feature map and constants, and nothing outside it may use its values."""
    if len(graph.outputs) != 1:
        return f"graph has {len(graph.outputs)} outputs (needs one classifier output)"
    logits = graph.outputs[0]
    if logits.producer is not None and logits.producer.op == "softmax":
        src = logits.producer.inputs[0]
        assert src is not None
        logits = src
    if logits.producer is None or logits.type.rank != 2:
        return f"output %{logits.name} is not a 2-D (batch, classes) value computed by the graph"
    # ancestors of the logits, walking back until a flatten of a 4-D value
    head: list[Node] = []
    seen: set[int] = set()
    flatten: Node | None = None
    stack = [logits.producer]
    while stack:
        n = stack.pop()
        if id(n) in seen:
            continue
        seen.add(id(n))
        src = n.inputs[0] if n.inputs else None
        if n.op in ("flatten", "reshape") and src is not None and src.type.rank == 4:
            if flatten is not None and flatten is not n:
                return "head has more than one flatten of a feature map"
            flatten = n
            head.append(n)
            continue
        if n.op not in HEAD_OPS:
            return f"node {n.name!r} ({n.op}) between the features and the logits is not a head op"
        head.append(n)
        for v in n.inputs:
            if v is not None and not v.is_const:
                if v.producer is None:
                    return f"head node {n.name!r} reads the graph input %{v.name}"
                stack.append(v.producer)
    if flatten is None:
        return "no flatten/reshape of a 4-D feature map before the logits"
    fmap = flatten.inputs[0]
    assert fmap is not None
    if flatten.output.shape != (fmap.shape[0], int(np.prod(fmap.shape[1:]))):
        return f"{flatten.name!r} does not flatten {fmap.type} to (batch, features)"
    if fmap.shape[2] * fmap.shape[3] == 1 and sum(n.op in ("dense", "matmul") for n in head) <= 1:
        return "the head is already a global-pooled linear classifier"
    ids = {id(n) for n in head}
    for n in head:
        for o in n.outputs:
            if o is logits:
                continue
            if any(o is g for g in graph.outputs) or any(id(u) not in ids for u, _ in o.uses):
                return f"value %{o.name} of the head is used outside it"
    order = {id(n): i for i, n in enumerate(graph.nodes)}
    return flatten, logits, sorted(head, key=lambda n: order[id(n)])


def fit_head(phi: np.ndarray, z: np.ndarray, ridge: float) -> tuple[np.ndarray, np.ndarray]:
    """Ridge regression of targets z (S, K) on features phi (S, C): returns W (K, C), b (K,).

    Centered, so the bias is not regularized; ``lam = ridge * trace(Phi_c^T Phi_c) / C``."""
    phi = np.asarray(phi, np.float64)
    z = np.asarray(z, np.float64)
    mu_p, mu_z = phi.mean(axis=0), z.mean(axis=0)
    pc, zc = phi - mu_p, z - mu_z
    gram = pc.T @ pc
    lam = ridge * float(np.trace(gram)) / max(1, gram.shape[0]) + 1e-12
    gram[np.diag_indices_from(gram)] += lam
    w = np.linalg.solve(gram, pc.T @ zc).T  # (K, C)
    return w, mu_z - w @ mu_p


def _synthetic_feeds(graph: Graph, count: int, rng: np.random.Generator) -> list[list[np.ndarray]]:
    return [
        [rng.standard_normal(v.shape).astype(v.dtype) for v in graph.inputs] for _ in range(count)
    ]


@register_pass
class FcToGap(Pass):
    """Replace a flatten + fully-connected classifier head by global average pooling + one dense layer.

    Method: NIN / GoogLeNet global average pooling; the new dense layer (C -> classes) is fitted by
    ridge-regularized least squares to the ORIGINAL network's logits on calibration data -- the
    student-teacher MSE distillation objective (teacher logits as targets) solved in closed form.
    LOSSY: the new head sees only the spatial mean of each channel; with few calibration samples the
    fit is underdetermined (``ridge`` regularizes it). Without ``ctx.calib`` it fits on ``synthetic``
    standard-normal inputs (data-free, usually much worse; a message says so). Reports params/MACs of
    the old and new head, the in-sample fit error and top-1 agreement with the teacher, and the
    end-to-end output error in its :class:`~mcopt.pass_manager.PassSummary` (``ctx.summary``)."""

    name = "fc-to-gap"
    lossless = False
    ridge: float = 1e-3
    calib_samples: int = 512
    synthetic: int = 64
    #: > 0: a NIN "mlpconv" stage before the pooling, conv(kernel x kernel, C -> hidden) + relu,
    #: He-initialized (seeded): a head with capacity for ``finetune`` / ``distill`` to train
    hidden: int = 0
    kernel: int = 3

    def __post_init__(self) -> None:
        if self.hidden < 0 or self.kernel < 1 or self.kernel % 2 == 0:
            raise ValueError("hidden must be >= 0 and kernel an odd number >= 1")

    def run(self, graph: Graph, ctx: PassContext) -> bool:
        found = find_head(graph)
        if isinstance(found, str):
            ctx.info(f"fc-to-gap: no change: {found}")
            ctx.summarize(summarize([], lossless=False, skipped={"head": found}))
            return False
        flatten, logits, head = found
        fmap = flatten.inputs[0]
        assert fmap is not None and logits.producer is not None
        mlpconv: list[Node] = []
        if self.hidden:
            c, k = fmap.shape[1], self.kernel
            rng = ctx.rng(11)
            w = rng.standard_normal((self.hidden, c, k, k)) * np.sqrt(2.0 / (c * k * k))
            p = k // 2
            conv = graph.add_node(
                "conv2d",
                [
                    fmap,
                    graph.const(w.astype(fmap.dtype), name="gap_mlpconv_w"),
                    graph.const(np.zeros(self.hidden, fmap.dtype), name="gap_mlpconv_b"),
                ],
                {"pads": (p, p, p, p)},
                name="gap_mlpconv",
                before=flatten,
            )
            act = graph.add_node("relu", [conv.output], name="gap_mlpconv_relu", before=flatten)
            mlpconv = [conv, act]
            fmap = act.output
        feeds: list = list(ctx.feeds(self.calib_samples))
        source = "calibration"
        if not feeds:
            feeds = _synthetic_feeds(graph, self.synthetic, ctx.rng(7))
            source = "synthetic N(0,1)"
            ctx.info(
                f"fc-to-gap: no calibration data; fitting the head on {len(feeds)} synthetic "
                "N(0,1) inputs (data-free, expect a large error)"
            )
        cap = capture(graph, [], feeds, extra=[fmap, logits])
        phi = cap.values[fmap.name].astype(np.float64).mean(axis=(2, 3))
        z = cap.values[logits.name].astype(np.float64)
        w, b = fit_head(phi, z, self.ridge)
        pred = phi @ w.T + b
        fit_err = float(np.linalg.norm(pred - z) / max(np.linalg.norm(z), 1e-30))
        agree = float(np.mean(pred.argmax(axis=1) == z.argmax(axis=1)))
        dtype = logits.dtype
        last = logits.producer
        gap = graph.add_node("global_avg_pool", [fmap], name="gap_head", before=last)
        flat = graph.add_node("flatten", [gap.output], {"axis": 1}, name="gap_flatten", before=last)
        dense = graph.add_node(
            "dense",
            [
                flat.output,
                graph.const(w.astype(dtype), name="gap_head_w"),
                graph.const(b.astype(dtype), name="gap_head_b"),
            ],
            name="gap_classifier",
            before=last,
        )
        new_nodes = [*mlpconv, gap, flat, dense]
        rec = LayerRecord(
            layer=f"{flatten.name}..{last.name}",
            method="FC head -> GAP + dense (least-squares distillation)",
            rank=None,
            params_before=node_params(head),
            params_after=node_params(new_nodes),
            macs_before=nodes_macs(head),
            macs_after=nodes_macs(new_nodes),
            rel_error=fit_err,
            error_kind="fit",
            note=f"fitted on {len(phi)} {source} samples, top-1 agreement {agree:.3f}",
        )
        substitute(graph, last, dense.output)
        ctx.info(f"fc-to-gap: {format_record(rec)}")
        n_eval = min(len(cap.feeds), 8)
        out_err = output_rel_error(cap.outputs[:n_eval], run_feeds(graph, cap.feeds[:n_eval]))
        ctx.summarize(
            summarize(
                [rec],
                lossless=False,
                output_rel_error=out_err if source == "calibration" else None,
                fit_rel_error=fit_err,
                top1_agreement=agree,
                samples=len(phi),
                data=source,
            )
        )
        return True


_VIEW_OPS = ("identity", "softmax", "reshape", "flatten", "dropout")


def _feeds_output(graph: Graph, node: Node) -> bool:
    """Whether `node`'s output reaches a graph output through view-like ops only."""
    v = node.output
    while True:
        if any(o is v for o in graph.outputs):
            return True
        users = v.users()
        if len(users) != 1 or users[0].op not in _VIEW_OPS:
            return False
        v = users[0].output


@register_pass
class LowRankDense(Pass):
    """Low-rank fully-connected layers: ``W (out x in) ~ U_r (S_r V_r^T)`` by truncated SVD.

    Method: Denton et al. (NIPS 2014) / Xue et al. (Interspeech 2013): a dense layer becomes
    ``dense(x, S_r V_r^T)`` (in -> r, no bias) then ``dense(., U_r) + b`` (r -> out); params
    ``r (in + out)`` instead of ``in * out``. Rank: ``rank``, else the smallest whose layer output error
    on calibration inputs is <= ``max_rel_error`` (bias-corrected), else by ``energy`` of the singular
    values; only ranks removing >= ``min_saving`` of the params are considered. ``param_ratio``
    instead fixes the compression: the largest rank with ``r (in + out) <= param_ratio * in * out``
    (no error search). Lossy (exact when rank(W) <= r)."""

    name = "lowrank-dense"
    lossless = False
    rank: int | None = None
    energy: float = 0.95
    max_rel_error: float | None = 0.05
    layers: tuple[str, ...] = ()
    min_saving: float = 0.1
    calib_samples: int = 64
    param_ratio: float | None = None
    #: leave the layer that produces a graph output (the classifier) alone: a rank-r classifier of
    #: C classes can tell at most r + 1 of them apart (param_ratio=0.25 made 128->10 rank 2: 0.6 %)
    skip_last: bool = True

    def __post_init__(self) -> None:
        if self.param_ratio is not None and not 0.0 < self.param_ratio <= 1.0:
            raise ValueError(f"param_ratio must be in (0, 1], got {self.param_ratio}")

    def run(self, graph: Graph, ctx: PassContext) -> bool:
        skipped: dict[str, str] = {}
        targets = []
        for n in graph.nodes:
            if n.op != "dense" or (self.layers and n.name not in self.layers):
                continue
            if self.skip_last and not self.layers and _feeds_output(graph, n):
                skipped[n.name] = (
                    "the classifier (skip_last=true): its rank bounds the classes it separates"
                )
                continue
            w = n.inputs[1]
            assert w is not None
            if not w.is_const or w.type.encoding is not None:
                skipped[n.name] = "weight is not a plain constant"
            else:
                targets.append(n)
        feeds = ctx.feeds(self.calib_samples)
        cap = capture(graph, targets, feeds) if feeds and targets else None
        records = []
        for node in targets:
            rec = self._rewrite(graph, node, cap.columns.get(node.name) if cap else None, skipped)
            if rec is not None:
                records.append(rec)
                ctx.info(f"lowrank-dense: {format_record(rec)}")
        out_err = None
        if cap is not None and records:
            out_err = output_rel_error(cap.outputs, run_feeds(graph, cap.feeds))
        ctx.summarize(summarize(records, lossless=False, output_rel_error=out_err, skipped=skipped))
        return bool(records)

    def _rewrite(
        self, graph: Graph, node: Node, cols: np.ndarray | None, skipped: dict[str, str]
    ) -> LayerRecord | None:
        x, wv = node.inputs[0], node.inputs[1]
        assert x is not None and wv is not None and wv.const is not None
        bv = node.inputs[2] if len(node.inputs) > 2 else None
        b = None if bv is None or bv.const is None else bv.const
        w = wv.const.astype(np.float64)
        out_f, in_f = w.shape
        u, s, vt = np.linalg.svd(w, full_matrices=False)

        def approx(r: int) -> np.ndarray:
            return (u[:, :r] * s[:r]) @ vt[:r]

        def err(r: int) -> float:
            if cols is not None:
                return layer_error(w, b, approx(r), cols)[0]
            return weight_error(w, approx(r))

        use_calib = cols is not None and self.max_rel_error is not None
        if self.rank is not None:
            r = min(self.rank, len(s))
        elif self.param_ratio is not None:  # fixed compression: largest rank within the ratio
            r = min(int(self.param_ratio * out_f * in_f // (out_f + in_f)), len(s))
            if r < 1:
                skipped[node.name] = f"rank 1 keeps more than param_ratio={self.param_ratio}"
                return None
        else:
            r_max = int((1.0 - self.min_saving) * out_f * in_f // (out_f + in_f))
            r_max = min(r_max, len(s))
            if r_max < 1:
                skipped[node.name] = f"no rank saves {self.min_saving:.0%} of the params"
                return None
            budget = float(self.max_rel_error) if use_calib else float(np.sqrt(1 - self.energy))
            found, tried = bisect_rank(err, 1, r_max, budget)
            if found is None:
                skipped[node.name] = (
                    f"rank {r_max} has rel error {tried[r_max]:.3g} > budget {budget:.3g}"
                )
                return None
            r = found
        dtype = node.output.dtype
        bias: Value | None = bv
        if cols is not None:
            shift = layer_error(w, b, approx(r), cols)[1]
            base = np.zeros(out_f) if b is None else b.astype(np.float64)
            bias = graph.const((base + shift).astype(dtype), name=f"{node.name}_lr_b")
        first = graph.add_node(
            "dense",
            [x, graph.const((s[:r, None] * vt[:r]).astype(dtype), name=f"{node.name}_lr0_w")],
            name=f"{node.name}_lr0",
            before=node,
        )
        second = graph.add_node(
            "dense",
            [first.output, graph.const(u[:, :r].astype(dtype), name=f"{node.name}_lr1_w"), bias],
            name=f"{node.name}_lr1",
            before=node,
        )
        rec = LayerRecord(
            layer=node.name,
            method="low-rank FC (SVD)",
            rank=r,
            params_before=node_params([node]),
            params_after=node_params([first, second]),
            macs_before=nodes_macs([node]),
            macs_after=nodes_macs([first, second]),
            rel_error=err(r),
            error_kind="calib" if cols is not None else "weights",
        )
        substitute(graph, node, second.output)
        return rec


__all__ = ["FcToGap", "LowRankDense", "find_head", "fit_head"]
