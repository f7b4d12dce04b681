"""What `lseg-trt info` reports: variant, input contract, parameter counts, where each tensor went."""

from __future__ import annotations

import math
from typing import Any

from torch import nn

from lseg_trt.models import LSeg
from lseg_trt.models.clip_text import text_tensor_shapes


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def describe(lseg: LSeg) -> dict[str, Any]:
    encoder = lseg.image_encoder
    details: dict[str, Any] = {
        "variant": lseg.variant,
        "lang_seg_backbone": lseg.config.lang_seg_backbone or None,
        "weights": lseg.source,
        "semantic": lseg.semantic,
        "input": {
            "size_rule": f"H and W multiples of {lseg.config.size_multiple}",
            "mean": list(lseg.mean),
            "std": list(lseg.std),
        },
        "output": f"(B, {lseg.config.out_c}, H/2, W/2) float32, unit norm per pixel",
        "parameters": {
            "backbone": _count(encoder.pretrained),
            "decoder": _count(encoder.scratch),
            # from the layout, not the module: building the tower would import open_clip just to count
            "text_tower": sum(math.prod(shape) for shape in text_tensor_shapes(lseg.config.text).values()),
        },
    }
    if lseg.report is not None:
        details["checkpoint"] = {
            "image_encoder_tensors": lseg.report.image_tensors,
            "text_tower_tensors": lseg.report.text_tensors,
            "ignored": lseg.report.ignored,
        }
    return details


def to_text(details: dict[str, Any]) -> str:
    params = details["parameters"]
    backbone = f" (lang-seg {details['lang_seg_backbone']})" if details["lang_seg_backbone"] else ""
    random_note = "" if details["semantic"] else " (seeded random: real latency, no semantics)"
    contract = details["input"]
    lines = [
        f"variant      {details['variant']}{backbone}",
        f"weights      {details['weights']}{random_note}",
        f"input        {contract['size_rule']}; mean {contract['mean']} std {contract['std']}",
        f"output       {details['output']}",
        f"parameters   backbone {params['backbone']:,} | decoder {params['decoder']:,}"
        f" | text tower {params['text_tower']:,}",
    ]
    if "checkpoint" in details:
        ck = details["checkpoint"]
        lines.append(
            f"loaded       {ck['image_encoder_tensors']} tensors into the image encoder,"
            f" {ck['text_tower_tensors']} into the text tower"
        )
        lines += [f"ignored      {n:4d} tensors: {reason}" for reason, n in ck["ignored"].items()]
    return "\n".join(lines)
