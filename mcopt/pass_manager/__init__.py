"""Passes, the pass registry and the pass manager.

A pass is a small class: a kebab-case ``name``, ``lossless`` (output equal up to float rounding), its
options as dataclass fields, and ``run(graph, ctx) -> bool`` (whether it changed the graph)::

    @register_pass
    class FoldDoubleRelu(Pass):
        '''relu(relu(x)) -> relu(x). Lossless.'''
        name = "fold-double-relu"
        lossless = True
        def run(self, graph, ctx) -> bool: ...

Subclasses become dataclasses automatically (writing ``@dataclass`` as well is harmless). Passes are
named in pipelines by spec strings ``"prune-channels:ratio=0.3,min_channels=8"``; option values are
parsed and checked against the field types. :class:`PassManager` runs a pipeline, verifies the IR after
every pass and records a :class:`PassReport`.

What lives where (everything below is importable from ``mcopt.pass_manager``):

- ``analyses.py``: typed results passes hand on: ``Analyses`` (the registry in ``PassContext.analyses``,
  keyed by type), ``ChannelPruningRecord``, ``LayerPruningRecord``, ``FixedPointFormats``,
  ``Int8FloatLayers``, and ``PassSummary`` (a rewrite pass's per-layer summary, ``ctx.summarize``).
- ``base.py``: ``Pass``, ``PassResult``, the registry (``register_pass``, ``register_pipeline``,
  ``list_passes``, ``list_pipelines``, ``pass_class``) and ``describe_passes`` / ``describe_pass``.
- ``context.py``: ``PassContext`` (what a pass may use besides the graph), ``TargetServices``, ``Feed``.
- ``specs.py``: spec strings and pipelines: ``get_pass`` (options checked against the field types),
  ``parse_spec``, ``split_pipeline``, ``resolve_passes``, ``PassLike``.
- ``report.py``: ``PassRecord``, ``PassReport`` (rows, markdown, rich table) and ``output_errors``.
- ``manager.py``: ``PassManager`` (verify after each pass, measure against the original),
  ``run_passes``, ``rich_progress_callback``.

Each module imports only the ones listed before it (analyses, report <- context <- base <- specs <-
manager), so there are no cycles; the built-in passes (``mcopt.passes``), which import this package,
are loaded lazily by the registry's lookups (``base._load_builtins``).
"""

from mcopt.pass_manager.analyses import (
    Analyses,
    ChannelPruningRecord,
    FixedPointFormats,
    Int8FloatLayers,
    LayerPruningRecord,
    PassSummary,
)
from mcopt.pass_manager.base import (
    Pass,
    PassResult,
    RewritePass,
    describe_pass,
    describe_passes,
    list_passes,
    list_pipelines,
    pass_class,
    register_pass,
    register_pipeline,
)
from mcopt.pass_manager.context import Feed, PassContext, TargetServices
from mcopt.pass_manager.manager import PassManager, rich_progress_callback, run_passes
from mcopt.pass_manager.report import PassRecord, PassReport, output_errors
from mcopt.pass_manager.specs import (
    PassLike,
    get_pass,
    parse_spec,
    resolve_passes,
    split_pipeline,
)

__all__ = [
    "Analyses",
    "ChannelPruningRecord",
    "Feed",
    "FixedPointFormats",
    "Int8FloatLayers",
    "LayerPruningRecord",
    "Pass",
    "PassContext",
    "PassLike",
    "PassManager",
    "PassRecord",
    "PassReport",
    "PassResult",
    "PassSummary",
    "RewritePass",
    "TargetServices",
    "describe_pass",
    "describe_passes",
    "get_pass",
    "list_passes",
    "list_pipelines",
    "output_errors",
    "parse_spec",
    "pass_class",
    "register_pass",
    "register_pipeline",
    "resolve_passes",
    "rich_progress_callback",
    "run_passes",
    "split_pipeline",
]
