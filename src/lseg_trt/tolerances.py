"""How close a backend's features must be to torch fp32, per precision: the one table that export
verification, `fidelity`, `compare` and the tests all judge by.

Each floor follows the precision's own rounding, not one library version's luck. fp32 graphs differ from
the reference only by reordered sums (~1e-7 relative), so even the worst pixel must agree. fp16 (11-bit
significand, unit roundoff 4.9e-4) and bf16 (8 bits, 3.9e-3) leave single pixels free to wander where
features are near-ties: a per-pixel minimum of a random network under bf16 varies with kernel choice
between torch releases, so the half precisions are judged on the per-pixel mean, which averages that
out, and a bad region still pulls it down.
"""

from __future__ import annotations

from dataclasses import dataclass

from lseg_trt.metrics import FeatureMetrics


@dataclass(frozen=True)
class Tolerance:
    metric: str  # a FeatureMetrics field
    floor: float

    def passes(self, metrics: FeatureMetrics) -> bool:
        """NaN or Inf on either side always fails."""
        return metrics.nonfinite == 0 and getattr(metrics, self.metric) >= self.floor

    def __str__(self) -> str:
        return f"{self.metric} >= {self.floor}"


TOLERANCES: dict[str, Tolerance] = {
    "fp32": Tolerance("pixel_cosine_min", 0.99999),
    "fp16": Tolerance("pixel_cosine_mean", 0.999),
    "bf16": Tolerance("pixel_cosine_mean", 0.995),
    # TF32 rounds matrix inputs to fp16's 10-bit significand (in fp32's range): fp16's rule
    "tf32": Tolerance("pixel_cosine_mean", 0.999),
}
