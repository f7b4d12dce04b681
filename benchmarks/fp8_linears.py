"""fp8 (e4m3) GEMMs for the ViT's linear layers: the Hopper candidate of issue 13, without torchao.

torchao is not on the GPU machine's image and cannot be installed there, so this uses what PyTorch
itself offers: `torch._scaled_mm` with row-wise scales, one per token for the activations (found on the
fly, so an outlier token does not crush the others' precision) and one per output channel for the
weights (found once). Inductor fuses the activation scaling into the kernels before each GEMM. Only the
linear layers change (about 70 % of ViT-L/16's FLOPs at 480x480: QKV, projection, MLP, readout);
attention and the convolutional decoder stay in the model's half precision.

A benchmark candidate, not a backend: it joins `lseg_trt.backends` only if its measured fidelity passes
an existing tolerance and its speed earns the extra precision mode.
"""

from __future__ import annotations

import torch
from torch import nn

E4M3_MAX = torch.finfo(torch.float8_e4m3fn).max  # 448: the largest finite e4m3 value


def rowwise_fp8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows in e4m3, float32 scale per row) with x ~= rows * scale; all-zero rows keep a tiny scale."""
    scale = x.abs().amax(dim=1, keepdim=True).float().clamp(min=1e-12) / E4M3_MAX
    return (x.float() / scale).to(torch.float8_e4m3fn), scale


class Fp8Linear(nn.Module):
    """`nn.Linear` with e4m3 operands and a bf16 product (the row-wise `_scaled_mm` gives only bf16)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        weight, scale = rowwise_fp8(linear.weight.detach())
        self.register_buffer("weight", weight)  # (out, in) row-major: .t() is the column-major operand
        self.register_buffer("weight_scale", scale.t().contiguous())  # (1, out)
        bias = None if linear.bias is None else linear.bias.detach().to(torch.bfloat16)
        self.register_buffer("bias", bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows, scale = rowwise_fp8(x.reshape(-1, x.shape[-1]))
        y = torch._scaled_mm(rows, self.weight.t(), scale_a=scale, scale_b=self.weight_scale, out_dtype=torch.bfloat16)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], y.shape[-1]).to(x.dtype)


def to_fp8_linears(model: nn.Module) -> int:
    """Replace, in place, every `nn.Linear` whose sizes the fp8 GEMM accepts (multiples of 16); the count."""
    swapped = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear and child.in_features % 16 == 0 and child.out_features % 16 == 0:
                setattr(parent, name, Fp8Linear(child))
                swapped += 1
    return swapped
