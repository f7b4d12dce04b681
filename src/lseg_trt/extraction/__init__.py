"""Feature extraction at scale: a streaming `FeatureExtractor`, device-side pre-processing and
reductions, sharded or per-image output with a resumable manifest, and `open_features` to read it;
downstream projects' recipes (`get_recipe`) batched on the device (`RecipeRunner`)."""

from lseg_trt.extraction.extractor import FeatureExtractor
from lseg_trt.extraction.manifest import FORMATS, RunLayout
from lseg_trt.extraction.multicrop import RecipeRunner
from lseg_trt.extraction.reader import FeatureSet, open_features
from lseg_trt.extraction.recipes import RECIPES, Recipe, get_recipe
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
    "RECIPES",
    "Recipe",
    "RecipeRunner",
    "Reduction",
    "RunLayout",
    "RunOptions",
    "RunOutput",
    "ShardSpec",
    "Summary",
    "extract",
    "extract_shard",
    "fit_pca",
    "get_recipe",
    "list_items",
    "open_features",
    "open_run",
    "pending_shards",
    "plan_shards",
    "reduction_fidelity",
    "run_shards",
]
