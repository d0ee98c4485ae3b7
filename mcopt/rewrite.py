"""Pattern rewriting, in two styles.

(a) A table of (pattern, function) pairs for local algebra (tinygrad's PatternMatcher style)::

    X = V("x")
    table = [(P("relu", P("relu", X)), lambda m: m.node(1).output)]   # relu(relu(x)) -> relu(x)
    apply_rewrites(graph, table)

    The function gets the :class:`Match` and returns the value replacing the root node's output
    (a list for multi-output roots), building new nodes with ``m.add(op, inputs, attrs)`` (inserted
    before the root), or None when it does not apply.

(b) A :class:`RewriteRule` class with ``pattern``, ``check(match) -> str | None`` (the reason it does
    not apply, as in onnxscript's rewriter) and ``rewrite(match, graph)``; for rules that look at the
    weights (folding BN into a conv, ...).

:func:`apply_rewrites` applies rules to a fixed point, removes the nodes that became dead, and with
``explain=True`` collects (node, rule, reason) for every candidate that was rejected.

Patterns: ``P(op, *inputs, name=..., attrs={...}, where=fn, shared=False)`` matches a node (op may be a
tuple of ops); ``V(name, const=None, where=fn, optional=False)`` captures a value; a capture name used
twice must bind the same value. By default a matched node other than the root must have every use of
its outputs inside the match (and none be a graph output): a rewrite that removes the root then also
removes it instead of duplicating its work. ``shared=True`` on a sub-pattern lifts that constraint.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from mcopt.ir.core import Graph, Node, Value

# --- patterns ------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class V:
    """Captures a value. ``const``: True = must be a constant, False = must not, None = either.
    ``optional``: also matches a missing (None) input."""

    name: str
    const: bool | None = None
    where: Callable[[Value], bool] | None = None
    optional: bool = False


@dataclass(frozen=True, eq=False)
class P:
    """Matches a node whose op is `op` (or one of a tuple) and whose inputs match `inputs`.

    Inputs beyond the pattern's must be None. ``attrs`` lists required attribute values; ``where`` is a
    predicate on the node; ``name`` captures the node."""

    op: str | tuple[str, ...]
    inputs: tuple[P | V, ...] = ()
    name: str | None = None
    attrs: dict[str, Any] | None = None
    where: Callable[[Node], bool] | None = None
    shared: bool = False

    def __init__(
        self,
        op: str | tuple[str, ...],
        *inputs: P | V,
        name: str | None = None,
        attrs: dict[str, Any] | None = None,
        where: Callable[[Node], bool] | None = None,
        shared: bool = False,
    ) -> None:
        object.__setattr__(self, "op", op)
        object.__setattr__(self, "inputs", tuple(inputs))
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "attrs", attrs)
        object.__setattr__(self, "where", where)
        object.__setattr__(self, "shared", shared)

    def ops(self) -> tuple[str, ...]:
        return (self.op,) if isinstance(self.op, str) else tuple(self.op)

    def __repr__(self) -> str:
        ins = ", ".join(repr(i) if isinstance(i, P) else f"?{i.name}" for i in self.inputs)
        return f"{'|'.join(self.ops())}({ins})"


Pattern = P

#: common captures
X = V("x")
Y = V("y")
W = V("w", const=True)
B = V("b", const=True, optional=True)


class Match:
    """A successful match: captured values/nodes by name, the matched nodes, and helpers to build."""

    def __init__(self, graph: Graph, root: Node) -> None:
        self.graph = graph
        self.root = root
        self.captures: dict[str, Value | Node | None] = {}
        self.nodes: list[Node] = []  # matched nodes, in pre-order (root first)

    def __getitem__(self, key: str) -> Any:
        return self.captures[key]

    def __getattr__(self, key: str) -> Any:
        try:
            return self.__dict__["captures"][key]
        except KeyError:
            raise AttributeError(key) from None

    def node(self, i: int) -> Node:
        """The i-th matched node in pre-order (0 = root, 1 = its first matched producer, ...)."""
        return self.nodes[i]

    def add(
        self,
        op: str,
        inputs: Sequence[Value | None],
        attrs: dict[str, Any] | None = None,
        **kw: Any,
    ) -> Node:
        """``graph.add_node`` placing the node before the root (its inputs are defined before it)."""
        kw.setdefault("before", self.root)
        return self.graph.add_node(op, inputs, attrs, **kw)

    def const(self, array: Any, name: str = "const") -> Value:
        return self.graph.const(array, name=name)


def match(pattern: P, node: Node, graph: Graph | None = None) -> tuple[Match | None, str | None]:
    """Match `pattern` rooted at `node`: (Match, None) or (None, reason)."""
    g = graph or node.graph
    assert g is not None, "node is not in a graph"
    m = Match(g, node)
    reason = _match_node(pattern, node, m, path="root")
    if reason is not None:
        return None, reason
    reason = _check_single_use(pattern, m)
    if reason is not None:
        return None, reason
    return m, None


def _bind(m: Match, name: str, obj: Value | Node | None, path: str) -> str | None:
    if name in m.captures and m.captures[name] is not obj:
        return f"{path}: capture {name!r} would bind two different things"
    m.captures[name] = obj
    return None


def _match_node(p: P, node: Node, m: Match, path: str) -> str | None:
    if node.op not in p.ops():
        return f"{path}: expected {'|'.join(p.ops())}, got {node.op} {node.name!r}"
    if any(n is node for n in m.nodes):
        return f"{path}: node {node.name!r} would be matched twice"
    if p.attrs:
        for k, want in p.attrs.items():
            if node.attrs.get(k) != want:
                return f"{path}: {node.op} {node.name!r} has {k}={node.attrs.get(k)!r}, pattern wants {want!r}"
    if p.where is not None and not p.where(node):
        return f"{path}: {node.op} {node.name!r} fails the pattern's condition"
    ins = node.inputs
    extra = [i for i in range(len(p.inputs), len(ins)) if ins[i] is not None]
    if extra:
        return f"{path}: {node.op} {node.name!r} has input {extra[0]} set, the pattern has {len(p.inputs)} input(s)"
    m.nodes.append(node)
    if p.name is not None:
        r = _bind(m, p.name, node, path)
        if r:
            return r
    for i, sub in enumerate(p.inputs):
        v = ins[i] if i < len(ins) else None
        sub_path = f"{path}.in{i}"
        if isinstance(sub, V):
            r = _match_value(sub, v, m, sub_path)
        else:
            if v is None or v.producer is None:
                what = "missing" if v is None else ("a constant" if v.is_const else "a graph input")
                r = f"{sub_path}: expected {'|'.join(sub.ops())}, input is {what}"
            else:
                r = _match_node(sub, v.producer, m, sub_path)
        if r:
            return r
    return None


def _match_value(p: V, v: Value | None, m: Match, path: str) -> str | None:
    if v is None:
        if not p.optional:
            return f"{path}: input {p.name!r} is missing"
        return _bind(m, p.name, None, path)
    if p.const is True and not v.is_const:
        return f"{path}: %{v.name} is not a constant"
    if p.const is False and v.is_const:
        return f"{path}: %{v.name} is a constant"
    if p.where is not None and not p.where(v):
        return f"{path}: %{v.name} fails the capture's condition"
    return _bind(m, p.name, v, path)


def _check_single_use(p: P, m: Match) -> str | None:
    inside = {id(n) for n in m.nodes}
    shared_ids = {id(n) for n, sp in _pairs(p, m) if sp.shared}
    graph_outs = {id(v) for v in m.graph.outputs}
    for n in m.nodes[1:]:
        if id(n) in shared_ids:
            continue
        for out in n.outputs:
            if id(out) in graph_outs:
                return f"%{out.name} (from {n.op} {n.name!r}) is also a graph output"
            outside = [u for u, _ in out.uses if id(u) not in inside]
            if outside:
                return (
                    f"%{out.name} (from {n.op} {n.name!r}) has {len(outside)} use(s) outside the match "
                    f"(e.g. {outside[0].op} {outside[0].name!r})"
                )
    return None


def _pairs(p: P, m: Match) -> list[tuple[Node, P]]:
    """(node, sub-pattern) in the pre-order the matcher used."""
    out: list[tuple[Node, P]] = []

    def walk(sp: P) -> None:
        out.append((m.nodes[len(out)], sp))
        for sub in sp.inputs:
            if isinstance(sub, P):
                walk(sub)

    walk(p)
    return out


# --- rules -----------------------------------------------------------------------------------------------
Replacement = Value | Sequence[Value] | None


class RewriteRule:
    """A rule: ``pattern``, ``check(match)`` (why it does not apply, or None) and ``rewrite``."""

    name: str = ""
    pattern: P

    def check(self, match: Match) -> str | None:
        return None

    def rewrite(self, match: Match, graph: Graph) -> Replacement:
        raise NotImplementedError

    def rule_name(self) -> str:
        return self.name or type(self).__name__


class FnRule(RewriteRule):
    """A (pattern, function) table entry as a rule."""

    def __init__(self, pattern: P, fn: Callable[[Match], Replacement], name: str = "") -> None:
        self.pattern = pattern
        self.fn = fn
        self.name = name or getattr(fn, "__name__", "") or repr(pattern)
        if self.name == "<lambda>":
            self.name = repr(pattern)

    def rewrite(self, match: Match, graph: Graph) -> Replacement:
        return self.fn(match)


RuleLike = RewriteRule | tuple[P, Callable[[Match], Replacement]]


def as_rules(rules: Sequence[RuleLike]) -> list[RewriteRule]:
    return [r if isinstance(r, RewriteRule) else FnRule(r[0], r[1]) for r in rules]


@dataclass
class RewriteResult:
    changed: bool = False
    applied: dict[str, int] = field(default_factory=dict)
    rejected: list[tuple[str, str, str]] = field(default_factory=list)  # (node, rule, reason)
    iterations: int = 0
    removed: int = 0

    def explain(self) -> str:
        return "\n".join(f"{n}: {r}: {why}" for n, r, why in self.rejected)


def _replace(graph: Graph, root: Node, repl: Value | Sequence[Value]) -> bool:
    new = [repl] if isinstance(repl, Value) else list(repl)
    if len(new) != len(root.outputs):
        raise ValueError(
            f"rewrite of {root.op} {root.name!r} returned {len(new)} value(s) for {len(root.outputs)} output(s)"
        )
    changed = False
    for old, nv in zip(root.outputs, new):
        if old is nv:
            continue
        if old.shape != nv.shape or old.dtype != nv.dtype:
            raise ValueError(
                f"rewrite of {root.op} {root.name!r} changes %{old.name} from {old.type} to {nv.type}"
            )
        keep_name = any(o is old for o in graph.outputs) and _renamable(graph, nv)
        graph.replace_all_uses_with(old, nv)
        if keep_name:  # a rewrite keeps the graph's output names (ONNX users fetch by name)
            nv.name = old.name
        changed = True
    return changed


def _renamable(graph: Graph, v: Value) -> bool:
    """A node output that is not already a graph output (renaming it changes no interface)."""
    return v.producer is not None and not any(o is v for o in graph.outputs)


def remove_dead(graph: Graph, roots: Sequence[Node] | None = None) -> int:
    """Remove nodes none of whose outputs are used or returned. With `roots`, only those nodes and,
    transitively, producers that become dead; else the whole graph. Returns how many were removed."""
    outs = {id(v) for v in graph.outputs}

    def dead(n: Node) -> bool:
        return n.graph is graph and all(not v.uses and id(v) not in outs for v in n.outputs)

    removed = 0
    work = list(graph.nodes[::-1] if roots is None else roots)
    while work:
        n = work.pop()
        if not dead(n):
            continue
        producers = [v.producer for v in n.inputs if v is not None and v.producer is not None]
        graph.remove_node(n)
        removed += 1
        work.extend(producers)
    return removed


def apply_rewrites(
    graph: Graph,
    rules: Sequence[RuleLike],
    *,
    max_iters: int = 100,
    explain: bool = False,
) -> RewriteResult:
    """Apply `rules` to every node until nothing changes (or `max_iters` sweeps), removing dead nodes.

    With `explain`, ``result.rejected`` lists (node name, rule name, reason) for every node whose op
    matched a rule's root but where the pattern, the single-use constraint or ``check`` said no."""
    rs = as_rules(rules)
    by_op: dict[str, list[RewriteRule]] = {}
    for r in rs:
        for op in r.pattern.ops():
            by_op.setdefault(op, []).append(r)
    res = RewriteResult()
    for it in range(max_iters):
        res.iterations = it + 1
        sweep_changed = False
        rejected: list[tuple[str, str, str]] = []
        for node in graph.iter_nodes():
            for rule in by_op.get(node.op, ()):
                if node.graph is not graph:
                    break
                m, why = match(rule.pattern, node, graph)
                if m is not None:
                    why = rule.check(m)
                if why is not None or m is None:
                    if explain:
                        rejected.append((node.name, rule.rule_name(), why or "no match"))
                    continue
                matched = list(m.nodes)
                repl = rule.rewrite(m, graph)
                if repl is None:
                    if explain:
                        rejected.append((node.name, rule.rule_name(), "rewrite returned None"))
                    continue
                _replace(graph, node, repl)
                res.removed += remove_dead(graph, matched)
                res.applied[rule.rule_name()] = res.applied.get(rule.rule_name(), 0) + 1
                res.changed = sweep_changed = True
                break  # the node is (usually) gone: next node
        res.rejected = rejected  # reasons from the last sweep (the state at the fixed point)
        if not sweep_changed:
            break
    if res.changed:
        graph.toposort()
    return res
