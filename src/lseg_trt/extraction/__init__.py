"""Feature extraction at scale: a streaming `FeatureExtractor`, device-side pre-processing and
reductions, sharded or per-image output with a resumable manifest, and `open_features` to read it."""

from lseg_trt.extraction.extractor import FeatureExtractor
from lseg_trt.extraction.manifest import FORMATS, RunLayout
from lseg_trt.extraction.reader import FeatureSet, open_features
from lseg_trt.extraction.reduce import PCABasis, Reduction, fit_pca, reduction_fidelity
from lseg_trt.extraction.run import (
    RunOptions,
    RunOutput,
    ShardSpec,
    Summary,
    extract,
    extract_shard,
    open_run,
    pending_shards,
    plan_shards,
    run_shards,
)
from lseg_trt.extraction.sources import Item, list_items

__all__ = [
    "FORMATS",
    "FeatureExtractor",
    "FeatureSet",
    "Item",
    "PCABasis",
    "Reduction",
    "RunLayout",
    "RunOptions",
    "RunOutput",
    "ShardSpec",
    "Summary",
    "extract",
    "extract_shard",
    "fit_pca",
    "list_items",
    "open_features",
    "open_run",
    "pending_shards",
    "plan_shards",
    "reduction_fidelity",
    "run_shards",
]
