"""The downstream recipes as their projects run them, crop by crop: references written from
shared/docs/recipes.md, independent of the package's planning and batching code.

Each is the project's loop as the doc describes it (lang-seg's `MultiEvalModule`: resize, pad each tile,
`module_inference` with the flip, count normalisation, resize back, sum), one crop per network call.
tests/test_recipes.py checks the batched `RecipeRunner` against them on the CPU; benchmarks/recipes_bench.py
times them on a GPU as the original loop.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

Net = Callable[[torch.Tensor], torch.Tensor]


def to_tensor_normalize(image: torch.Tensor, mean: tuple, std: tuple) -> torch.Tensor:
    """torchvision ToTensor + Normalize(mean, std) of a uint8 (H, W, 3) image, batched: (1, 3, H, W)."""
    x = image.permute(2, 0, 1).float().div(255)
    device = image.device
    x = (x - torch.tensor(mean, device=device).view(3, 1, 1)) / torch.tensor(std, device=device).view(3, 1, 1)
    return x[None]


def pad_image(img: torch.Tensor, mean: tuple, std: tuple, crop_size: int) -> torch.Tensor:
    b, c, h, w = img.shape
    padh = crop_size - h if h < crop_size else 0
    padw = crop_size - w if w < crop_size else 0
    pad_values = -np.array(mean) / np.array(std)
    out = img.new_empty((b, c, h + padh, w + padw))
    for i in range(c):
        out[:, i] = F.pad(img[:, i], (0, padw, 0, padh), value=float(pad_values[i]))
    return out


def flip_image(img: torch.Tensor) -> torch.Tensor:
    return img.index_select(3, torch.arange(img.size(3) - 1, -1, -1, device=img.device))


def module_inference(f: Net, image: torch.Tensor, flip: str) -> torch.Tensor:
    output = f(image)
    if flip != "none":
        output = output + flip_image(f(flip_image(image)))
        if flip == "mean":
            output = output / 2
    return output


def resize(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    return F.interpolate(x, (h, w), mode="bilinear", align_corners=True)


def multi_eval(
    image: torch.Tensor, f: Net, mean: tuple, std: tuple, *, base: int, crop: int, scales: list[float], flip: str,
    back: bool = True, grid: bool = False,
) -> torch.Tensor:  # fmt: skip
    """lang-seg's MultiEvalModule.forward (doc section 1), with OpenScene's early return (`grid`) and
    VLMaps' no-resize-back (`back` False)."""
    _, _, h, w = image.shape
    stride = int(crop * 2.0 / 3.0)
    scores = None
    for scale in scales:
        long_size = int(math.ceil(base * scale))
        if h > w:
            height = long_size
            width = short_size = int(1.0 * w * long_size / h + 0.5)
        else:
            width = long_size
            height = short_size = int(1.0 * h * long_size / w + 0.5)
        cur = resize(image, height, width)
        if long_size <= crop:
            outputs = module_inference(f, pad_image(cur, mean, std, crop), flip)
            if grid:
                return outputs[:, :, :h, :w]
            outputs = outputs[:, :, :height, :width]
        else:
            pad = pad_image(cur, mean, std, crop) if short_size < crop else cur
            _, _, ph, pw = pad.shape
            h_grids = int(math.ceil(1.0 * (ph - crop) / stride)) + 1
            w_grids = int(math.ceil(1.0 * (pw - crop) / stride)) + 1
            outputs = count = None
            for idh in range(h_grids):
                for idw in range(w_grids):
                    h0, w0 = idh * stride, idw * stride
                    h1, w1 = min(h0 + crop, ph), min(w0 + crop, pw)
                    out = module_inference(f, pad_image(pad[:, :, h0:h1, w0:w1], mean, std, crop), flip)
                    if outputs is None:
                        outputs = out.new_zeros((1, out.shape[1], ph, pw))
                        count = out.new_zeros((1, 1, ph, pw))
                    outputs[:, :, h0:h1, w0:w1] += out[:, :, : h1 - h0, : w1 - w0]
                    count[:, :, h0:h1, w0:w1] += 1
            assert (count == 0).sum() == 0
            outputs = (outputs / count)[:, :, :height, :width]
        score = resize(outputs, h, w) if back else outputs
        scores = score if scores is None else scores + score
    return scores


def opencv_positions(dsize: int, ssize: int, fixed: bool) -> list[tuple[int, float]]:
    """OpenCV's INTER_LINEAR source index and fraction per output pixel: `fx = (dx + 0.5) * scale_x - 0.5`
    with `scale_x = 1. / inv_scale_x` in double, cast to float on the uint8 path (resize.cpp)."""
    scale = 1.0 / (dsize / ssize)
    out = []
    for d in range(dsize):
        fx = (d + 0.5) * scale - 0.5
        if fixed:
            fx = float(np.float32(fx))
        sx = math.floor(fx)
        out.append((sx, fx - sx))
    return out


def opencv_resize_u8(image: np.ndarray, h: int, w: int) -> np.ndarray:
    """`cv2.resize(image, (w, h))` of a uint8 (H, W, C) image, as OpenCV's `resizeGeneric_` computes it:
    `HResizeLinear` with 11-bit weights (`saturate_cast<short>(cbuf * 2048)`, columns outside the image
    take the edge pixel), then `VResizeLinear<uchar>` on rows clamped to the image, whose fractions stay."""
    height, width = image.shape[:2]
    if (height, width) == (h, w):
        return image.copy()

    def weights(f: float) -> tuple[int, int]:
        f32 = np.float32(f)
        return int(np.rint((np.float32(1) - f32) * np.float32(2048))), int(np.rint(f32 * np.float32(2048)))

    src = image.astype(np.int64)
    rows = np.empty((height, w, image.shape[2]), np.int64)
    for dx, (sx, fx) in enumerate(opencv_positions(w, width, True)):
        if sx < 0:
            sx, fx = 0, 0.0
        if sx >= width - 1:
            sx, fx = width - 1, 0.0
        a0, a1 = weights(fx)
        rows[:, dx] = src[:, sx] * a0 + src[:, min(sx + 1, width - 1)] * a1
    out = np.empty((h, w, image.shape[2]), np.uint8)
    for dy, (sy, fy) in enumerate(opencv_positions(h, height, True)):
        b0, b1 = weights(fy)
        top, bottom = rows[min(max(sy, 0), height - 1)], rows[min(max(sy + 1, 0), height - 1)]
        out[dy] = (((b0 * (top >> 4)) >> 16) + ((b1 * (bottom >> 4)) >> 16) + 2) >> 2
    return out


def opencv_resize_f64(image: np.ndarray, h: int, w: int) -> np.ndarray:
    """`cv2.resize(image.astype(float), (w, h))`: OpenCV passes 64-bit linear resizes to IPP, which keeps
    positions and weights in double and replicates the edge pixels (matches the real cv2, see
    tests/fixtures/cv2_resize.npz)."""
    image = image.astype(np.float64)
    height, width = image.shape[:2]
    if (height, width) == (h, w):
        return image

    def taps(dsize: int, ssize: int) -> list[tuple[int, int, float]]:
        out = []
        for s, f in opencv_positions(dsize, ssize, False):
            if s < 0 or s >= ssize - 1:
                s, f = min(max(s, 0), ssize - 1), 0.0
            out.append((s, min(s + 1, ssize - 1), f))
        return out

    rows = np.stack([image[:, s0] * (1 - f) + image[:, s1] * f for s0, s1, f in taps(w, width)], 1)
    return np.stack([rows[s0] * (1 - f) + rows[s1] * f for s0, s1, f in taps(h, height)], 0)


def unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=1, keepdim=True)


HALF = (0.5, 0.5, 0.5)  # lang-seg's mean and std, written into every project's code whatever the checkpoint


def reference(head1: Net, name: str, image: torch.Tensor, s: dict) -> torch.Tensor:
    """The recipe `name` as its project runs it (doc sections 1-5) on a uint8 (H, W, 3) image on the
    network's device, with the settings `s` (the overridden fields; the row's values otherwise).

    Args:
        head1: the network, normalised images (1, 3, H, W) -> raw head1 (1, C, H/2, W/2) float32.
    """
    mean = std = HALF
    tiled = {"base": s.get("base_size", 520), "crop": s.get("crop", 480)}
    with torch.inference_mode():
        if name == "langseg-eval":
            scales = s.get("scales", [0.5, 0.75, 1.0, 1.25, 1.5, 1.75])
            x = to_tensor_normalize(image, mean, std)
            if "input_size" in s:  # lang-seg's app: torchvision 0.10's Resize of the normalised tensor
                x = F.interpolate(x, s["input_size"], mode="bilinear", align_corners=False)
            out = multi_eval(x, lambda c: resize(unit(head1(c)), c.shape[2], c.shape[3]), mean, std, **tiled,
                             scales=scales, flip="sum")  # fmt: skip
            return out[0] / (2 * len(scales))
        if name == "vlmaps":
            logit_scale = torch.tensor(1 / 0.07)  # fp32, 0-dim: fp16 arithmetic with an fp16 tensor

            def f(c: torch.Tensor) -> torch.Tensor:
                return resize((logit_scale * unit(head1(c)).half()).float(), c.shape[2], c.shape[3])

            x = to_tensor_normalize(image, mean, std)
            return multi_eval(x, f, mean, std, **tiled, scales=[1.0], flip="none", back=False)[0]
        if name == "openscene":
            x = to_tensor_normalize(image, mean, std)
            two_l = 2 * max(image.shape[0], image.shape[1])
            out = multi_eval(x, lambda c: unit(head1(c)), mean, std, base=two_l, crop=two_l, scales=[1.0],
                             flip="sum", grid=True)  # fmt: skip
            return out[0].half()
        if name in ("lseg-minimal", "conceptfusion"):
            h, w = s.get("input_size", (480, 640))
            pixels = image.cpu().numpy()
            if name == "lseg-minimal":  # cv2.imread's uint8 frame, cv2.resize, float / 255
                resized = torch.from_numpy(opencv_resize_u8(pixels, h, w)).float()
            else:  # gradslam: imread as float64, cv2.resize, .type(torch.float); then / 255
                resized = torch.from_numpy(opencv_resize_f64(pixels, h, w)).float()
            x = resized.to(image.device).permute(2, 0, 1)[None] / 255.0
            out = head1(x)
            if name == "lseg-minimal":
                return F.normalize(out, dim=1)[0]
            size = s.get("output_size")
            return (resize(out, *size) if size else out)[0]
        if name in ("dff", "feature-3dgs"):
            th, tw = s.get("input_size", (360, 480))
            x = to_tensor_normalize(image, mean, std)
            if x.shape[-1] > tw:
                x = resize(x, th, tw)
            scales = s.get("scales", [0.75, 1.0, 1.25, 1.75])
            if name == "dff":
                out = multi_eval(x, lambda c: unit(resize(head1(c), c.shape[2], c.shape[3])), mean, std, **tiled,
                                 scales=scales, flip="mean")  # fmt: skip
                out = F.interpolate(out, (th, tw), mode="bilinear", align_corners=False)
                return F.normalize(out, dim=1)[0].half()
            out = multi_eval(x, lambda c: resize(head1(c), c.shape[2], c.shape[3]), mean, std, **tiled,
                             scales=scales, flip="mean")  # fmt: skip
            return out[0].half()
    raise AssertionError(name)
