"""One table from a `run.sh` results folder: every speed figure with its engine's build and its fidelity.

Reads `bench-*/bench.json`, `fidelity-*/fidelity.json`, `engines/*.json` (sidecars) and `pipeline-*/pipeline.json`
and writes `<results>/summary.md` (and prints it). Fidelity is the worst sample photo of each backend at each
size (per-pixel cosine min and mean against torch fp32), so a speed row is never read without it.

    python benchmarks/trt85/summarize.py benchmarks/results/h100-2026-12-07-trt85
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

from lseg_trt.tensorrt.options import engine_options


def _load(folder: Path, pattern: str) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(folder.glob(pattern))]


def _fidelity(folder: Path) -> dict[tuple[str, str, str, str], dict]:
    """(variant, backend without +graph, size, engine file or "") -> worst comparison over the sample photos."""
    worst: dict[tuple[str, str, str, str], dict] = {}
    for report in _load(folder, "fidelity-*/fidelity.json"):
        for c in report["comparisons"]:
            key = (c["variant"], c["candidate"], c["size"], c.get("engine", ""))
            if key not in worst or c["pixel_cosine_min"] < worst[key]["pixel_cosine_min"]:
                worst[key] = c
    return worst


def _engines(folder: Path) -> dict[str, dict]:
    """engine file name -> its build record (sidecar), beside which fidelity verdicts are not build records."""
    found = {}
    for path in sorted((folder / "engines").glob("*.json")):
        if not path.name.endswith(".fidelity.json"):
            found[path.with_suffix(".engine").name] = json.loads(path.read_text())
    return found


def main(folder: Path) -> str:
    fidelity, engines = _fidelity(folder), _engines(folder)
    rows = [(part, r) for part in _load(folder, "bench-*/bench.json") for r in part["rows"]]
    ceiling = next((p["matmul_ceiling_bf16"] for p in _load(folder, "bench-*/bench.json")), None)
    machine = next((p["machine"] for p in _load(folder, "bench-*/bench.json")), {})
    gpus = ", ".join(g["name"] for g in machine.get("gpus", [])) or "?"
    trt = machine.get("packages", {}).get("tensorrt", "?")
    lines = [
        f"# TensorRT {trt} beside torch on {gpus}: speed, build and fidelity in one run",
        "",
        f"bf16 GEMM ceiling of the same run: {ceiling['tflops']:.0f} TFLOP/s." if ceiling else "",
        "Latency: median of 50 iterations after 10 warm-up, CUDA events, device compute only; tensorrt rows run"
        " the engine through lseg-trt's runner with its enqueue in a CUDA graph. Fidelity: worst sample photo"
        " against torch fp32 (TF32 off), per-pixel cosine.",
        "",
        "| variant | size | batch | backend | median ms | images/s | TFLOP/s | pixel cos min | pixel cos mean "
        "| verdict |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for _, r in sorted(rows, key=lambda pr: (pr[1]["variant"], pr[1]["batch"], pr[1]["height"] * pr[1]["width"])):
        size = f"{r['height']}x{r['width']}"
        name = r["backend"].removesuffix("+graph")
        f = fidelity.get((r["variant"], name, size, r.get("engine", "")))
        verdict = {True: "pass", False: "FAIL"}.get(f["passed"], "-") if f else "-"
        cos = (f"{f['pixel_cosine_min']:.5f}", f"{f['pixel_cosine_mean']:.6f}", verdict) if f else ("-",) * 3
        if name == "torch":
            cos = ("1 (reference)", "1", "-")
        timing = (
            (f"{r['median_ms']:.3f}", f"{r['throughput_ips']:.1f}", f"{r['tflops_achieved']:.0f}")
            if r["median_ms"] is not None
            else (r["status"][:60], "", "")
        )
        options = engine_options(r.get("engine", ""))
        backend = r["backend"] + (f" `{options}`" if options else "")
        lines.append(f"| {r['variant']} | {size} | {r['batch']} | {backend} | " + " | ".join((*timing, *cos)) + " |")
    lines += ["", "| engine | build s | size MB | profile min / opt / max |", "|---|---|---|---|"]
    for name, e in engines.items():
        p = e["request"]["profile"]
        shapes = " / ".join("x".join(map(str, p[k])) for k in ("min", "opt", "max"))
        lines.append(f"| `{name}` | {e['build_seconds']:.0f} | {e['engine_size'] / 1e6:.1f} | {shapes} |")
    for part in _load(folder, "pipeline-*/pipeline.json"):
        disk = part["to_disk"].get("shards", {})
        lines += [
            "",
            f"extract end to end ({part['settings']['engine']}, {part['settings']['frames']} JPEG frames 1280x720 ->"
            f" {part['settings']['size'][0]}x{part['settings']['size'][1]}, batch {part['settings']['batch']}):"
            f" device only {part['device_only_images_per_s']:.1f} images/s; stream() into GPU memory"
            f" {part['stream_to_device_images_per_s']:.1f}; to disk (shards, fp16, pool {part['settings']['pool']})"
            f" {disk.get('images_per_s', float('nan')):.1f}; one 720p frame {part['frame_720p_latency_ms']:.2f} ms.",
        ]
    profiles = defaultdict(list)
    for part in _load(folder, "profile/layers_*.json"):
        profiles[part["engine"]].append(part)
    for engine, parts in profiles.items():
        kinds = ", ".join(f"{k} {v:.2f} ms" for k, v in parts[0]["by_kind_ms"].items())
        lines += [
            "",
            f"Per-layer profile of `{engine}` at {parts[0]['shape']}: {parts[0]['total_ms']:.2f} ms; {kinds}.",
        ]
    text = "\n".join(lines) + "\n"
    (folder / "summary.md").write_text(text)
    return text


if __name__ == "__main__":
    print(main(Path(sys.argv[1])))
