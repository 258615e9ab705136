"""Parameter declarations shared by several explainers (one definition, one meaning everywhere)."""

from .registry import Param

HEAD_FUSION = Param(
    "head_fusion",
    str,
    "mean",
    "How the heads of a layer are fused into one matrix.",
    choices=("mean", "max", "min"),
)
DISCARD_RATIO = Param(
    "discard_ratio",
    float,
    0.0,
    "Per image and layer, zero this fraction of the lowest fused attention entries (CLS row/column kept).",
    low=0.0,
    high=1.0,
    high_exclusive=True,
)
START_LAYER = Param(
    "start_layer",
    int,
    0,
    "First block included in the product (earlier blocks are skipped).",
    low=0,
    high="num_layers",
)
LAYER = Param(
    "layer",
    int,
    -1,
    "Block whose attention is shown (-1 is the last).",
    low=0,
    high="num_layers",
    negative_index=True,
)
HEAD = Param(
    "head",
    int,
    None,
    "Show this single head instead of fusing the heads (empty: fuse).",
    low=0,
    high="num_heads",
    optional=True,
)
