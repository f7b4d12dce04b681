"""Frames per second of each downstream recipe: batched on the device (`lseg_trt.extraction.multicrop`)
against the same recipe run crop by crop as its project runs it, on the same device in the same run.

Usage: python benchmarks/recipes_bench.py --out DIR [--variant vit_l16] [--weights random] [--device auto]
           [--precisions fp32,fp16] [--recipes all] [--frames 4] [--loop-frames 2] [--batch 16] [--no-graph]
           [--fp16-backend NAME]

The original loop is tests/recipe_reference.py (lang-seg's `MultiEvalModule` and the projects' own steps,
one crop per network call in Python), the reference the batched path is tested against on the CPU; here
it runs the encoder `placed_encoder` makes, in the row's precision. The projects ran fp32, so the fp32 loop
is "the project's own loop" and each row's speed-up is against it (and against the loop in the row's own
precision). The batched path takes as many frames per call as fit `--batch` network inputs (one frame for
lang-seg's 36 forwards, 16 for lseg-minimal's one), as `lseg-trt extract --recipe --batch` does; fp16 rows
replay CUDA graphs on a GPU (`torch-fp16+graph`) unless `--no-graph`. Each row also records how the first
frame's batched output agrees with the loop's on this device (per-pixel cosine min, max-abs).

Frames are each project's real input: 1280x960 (4:3) for lang-seg's evaluation, VLMaps, DFF and
Feature-3DGS; ScanNet's 320x240 for OpenScene; 640x480 for lseg-minimal and ConceptFusion. Writes
DIR/recipes_bench.{json,md} with the machine (`lseg_trt.hwinfo.collect()`). With `--variant tiny_vit
--device cpu` it runs in seconds (tests/test_benchmark_scripts.py), so the GPU session finds it working.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lseg_trt import hwinfo
from lseg_trt.artifacts import ModelSource, open_model
from lseg_trt.backends import make_runner, parse_backend
from lseg_trt.backends.base import default_device, placed_encoder
from lseg_trt.errors import LsegTrtError
from lseg_trt.extraction.multicrop import RecipeRunner
from lseg_trt.extraction.recipes import RECIPES, get_recipe, plan_scale
from lseg_trt.metrics import compare_features
from lseg_trt.reports import write_result

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from recipe_reference import reference  # noqa: E402 - the tested crop-by-crop loop lives with the tests

FRAMES = {  # (H, W) each project's input
    "default": (480, 640),
    "langseg-eval": (960, 1280),
    "vlmaps": (960, 1280),
    "openscene": (240, 320),
    "lseg-minimal": (480, 640),
    "conceptfusion": (480, 640),
    "dff": (960, 1280),
    "feature-3dgs": (960, 1280),
}


def forwards_per_frame(name: str, frame: tuple[int, int]) -> int:
    """Network inputs one frame takes (crops x flips), from the recipe's layout."""
    recipe = get_recipe(name)
    if not recipe.tiled:
        return 1
    image = recipe.input_image_size(frame)
    geometry = recipe.geometry(image)
    crops = sum(len(plan_scale(image, *geometry, s).tiles) for s in recipe.scales)
    return crops * recipe.forwards_per_tile


def synced(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def frames_per_s(run: Any, frames: int, device: torch.device) -> float:
    """Frames per second of `run()` (one call = `frames` frames, or one each when called `frames` times):
    a synchronised monotonic clock around the calls, warm-up done by the caller."""
    synced(device)
    start = time.perf_counter()
    run()
    synced(device)
    return frames / (time.perf_counter() - start)


class NetworkClock:
    """Time spent in the runner's network calls during a batched call, so a row splits its frame time into
    network and the rest (crop cutting, up-sampling, stitching, sums): CUDA events around each `infer` (no
    host wait between calls) on a GPU, the host clock on the CPU, where calls are synchronous. Installed on
    the runner instance for one call, then removed."""

    def __init__(self, runner: Any, device: torch.device) -> None:
        self.runner, self.cuda = runner, device.type == "cuda"
        self.spans: list[tuple[Any, Any]] = []

    def __enter__(self) -> NetworkClock:
        infer = self.runner.infer

        def timed(x: torch.Tensor) -> torch.Tensor:
            start = self._mark()
            out = infer(x)
            self.spans.append((start, self._mark()))
            return out

        self.runner.infer = timed
        return self

    def __exit__(self, *exc: object) -> None:
        del self.runner.infer  # the class's method again

    def _mark(self) -> Any:
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def seconds(self) -> float:
        if not self.cuda:
            return sum(end - start for start, end in self.spans)
        torch.cuda.synchronize()
        return sum(start.elapsed_time(end) for start, end in self.spans) / 1000


def backend_name(name: str) -> str:
    """An argparse type: a backend name `parse_backend` knows, else argparse's one-line error (exit 2)."""
    try:
        parse_backend(name)
    except LsegTrtError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return name


def bench_recipe(
    name: str, source: ModelSource, loops: dict[str, Any], precision: str, backend: str, args: argparse.Namespace
) -> dict[str, Any]:
    """One row: the batched path and the loop on this recipe's frame."""
    device = torch.device(args.device)
    frame = FRAMES[name]
    rng = np.random.default_rng(0)
    image = torch.from_numpy(rng.integers(0, 256, (*frame, 3), dtype=np.uint8)).to(device)
    recipe = get_recipe(name)
    forwards = forwards_per_frame(name, frame)
    per_call = max(1, args.batch // forwards)
    runner = make_runner(parse_backend(backend), source, device, args.cache)
    batched = RecipeRunner(runner, recipe, source.info.mean, source.info.std, batch_size=args.batch)
    row: dict[str, Any] = {"recipe": name, "frame": f"{frame[1]}x{frame[0]}", "precision": precision}
    row |= {"backend": backend, "forwards_per_frame": forwards, "frames_per_call": per_call}
    timed_loops = {p: loops[p] for p in ("fp32", precision)}

    def loop(head1: Any, frames: int) -> list[torch.Tensor]:
        return [reference(head1, name, image, {}) for _ in range(frames)]

    with torch.inference_mode():
        first = batched([image])[0]  # warm-up (and CUDA-graph capture) of the one-frame shapes
        calls = [image] * per_call
        batched(calls)  # and of the many-frame ones
        row["output"] = f"{tuple(first.shape)} {str(first.dtype).removeprefix('torch.')}"
        agreement = compare_features(first[None].float(), loop(loops[precision], 1)[0][None].float())
        row["pixel_cosine_min"], row["max_abs"] = agreement.pixel_cosine_min, agreement.max_abs
        rounds = max(1, args.frames // per_call)
        row["batched_fps"] = frames_per_s(lambda: [batched(calls) for _ in range(rounds)], rounds * per_call, device)
        with NetworkClock(runner, device) as clock:
            batched(calls)
        row["network_ms_per_frame"] = clock.seconds() * 1000 / per_call
        row["rest_ms_per_frame"] = 1000 / row["batched_fps"] - row["network_ms_per_frame"]
        row["batched_one_frame_fps"] = frames_per_s(
            lambda: [batched([image]) for _ in range(args.loop_frames)], args.loop_frames, device
        )
        for p, head1 in timed_loops.items():
            row[f"loop_{p}_fps"] = frames_per_s(lambda head1=head1: loop(head1, args.loop_frames), args.loop_frames,
                                                device)  # fmt: skip
    runner.deactivate()
    row["speedup_vs_fp32_loop"] = row["batched_fps"] / row["loop_fp32_fps"]
    row[f"speedup_vs_{precision}_loop"] = row["batched_fps"] / row[f"loop_{precision}_fps"]
    return row


def markdown(record: dict[str, Any]) -> str:
    lines = [
        "# Downstream recipes: batched on the device vs the project's crop-by-crop loop",
        "",
        f"{record['variant']} ({record['weights']} weights) on {record['device']}; frames/s of one frame's "
        "features; the loop is the project's own (fp32, one crop per call); `x` = batched / loop; a batched "
        "frame's time split into the network's calls and the rest (cutting, up-sampling, stitching, sums).",
        "",
        "| recipe | frame | output | forwards/frame | precision | backend | batched frames/s (frames/call) | "
        "network ms/frame | rest ms/frame | batched, one frame/call | loop fp32 | x vs fp32 loop | "
        "loop same precision | x vs it | cos min | max-abs |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in record["rows"]:
        if "error" in r:
            lines.append(f"| {r['recipe']} | | | | {r['precision']} | {r['backend']} | error: {r['error']} |")
            continue
        p = r["precision"]
        lines.append(
            f"| {r['recipe']} | {r['frame']} | {r['output']} | {r['forwards_per_frame']} | {p} | {r['backend']} | "
            f"{r['batched_fps']:.2f} ({r['frames_per_call']}) | {r['network_ms_per_frame']:.1f} | "
            f"{r['rest_ms_per_frame']:.1f} | {r['batched_one_frame_fps']:.2f} | "
            f"{r['loop_fp32_fps']:.2f} | {r['speedup_vs_fp32_loop']:.1f} | {r[f'loop_{p}_fps']:.2f} | "
            f"{r[f'speedup_vs_{p}_loop']:.1f} | {r['pixel_cosine_min']:.6f} | {r['max_abs']:.2e} |"
        )
    lines += ["", hwinfo.to_markdown(record["machine"])]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--variant", default="vit_l16")
    parser.add_argument("--weights", default="random")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precisions", default="fp32,fp16", help="comma list of fp32, fp16")
    parser.add_argument("--recipes", default="all", help="comma list, or all (every row but default)")
    parser.add_argument("--frames", type=int, default=4, help="frames timed on the batched path")
    parser.add_argument("--loop-frames", type=int, default=2, help="frames timed on the loop")
    parser.add_argument("--batch", type=int, default=16, help="network inputs per call of the batched path")
    parser.add_argument("--no-graph", action="store_true", help="fp16 without CUDA graphs")
    parser.add_argument(
        "--fp16-backend",
        type=backend_name,
        help="the fp16 rows' backend, e.g. torch-compile-fp16+graph (what "
        "`extract --recipe` picks on a GPU; compiles each call shape) [torch-fp16+graph on a GPU]",
    )
    parser.add_argument("--cache", type=Path, default=Path("models"))
    args = parser.parse_args()
    args.device = default_device() if args.device == "auto" else args.device
    device = torch.device(args.device)
    names = [n for n in RECIPES if n != "default"] if args.recipes == "all" else args.recipes.split(",")
    precisions = args.precisions.split(",")
    started = time.perf_counter()
    source = open_model(weights=args.weights, variant=args.variant)
    loops = {p: placed_encoder(source.lseg.image_encoder, device, p).head1_features for p in {"fp32", *precisions}}
    record: dict[str, Any] = {"machine": hwinfo.collect(), "variant": args.variant, "weights": args.weights}
    record |= {"device": str(device), "frames": args.frames, "loop_frames": args.loop_frames, "batch": args.batch}
    record["rows"] = []
    for precision in precisions:
        graph = device.type == "cuda" and precision != "fp32" and not args.no_graph
        backend = ("torch" if precision == "fp32" else f"torch-{precision}") + ("+graph" if graph else "")
        if precision == "fp16" and args.fp16_backend:
            backend = args.fp16_backend
        for name in names:
            try:
                row = bench_recipe(name, source, loops, precision, backend, args)
            except (RuntimeError, MemoryError) as e:  # one recipe out of memory must not lose the others
                row = {"recipe": name, "precision": precision, "backend": backend, "error": str(e).splitlines()[0]}
            print(row, flush=True)
            record["rows"].append(row)
    record["seconds"] = time.perf_counter() - started
    args.out.mkdir(parents=True, exist_ok=True)
    for path in write_result(args.out, "recipes_bench", record, markdown(record)):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
