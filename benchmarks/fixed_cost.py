"""A run's fixed cost, stage by stage, in fresh processes, for two source trees in the same run (issue 24).

For each tree (`--tree NAME=PATH`, a checkout's root or its `src`; e.g. the commit before the fixed-cost work
and the current one) and each interpreter condition (`image`: as the machine's Python is, which on the
GPU host compiles torch's sources in every process; `bytecode`: with a bytecode cache, as a pip install
has), in fresh processes, after one untimed run that fills the caches:
- stages: a child process times interpreter start, `import torch`, our imports, the weights, the backend
  choice and runner (`auto` hashes the checkpoint), activation with its warm-up batch (weights onto the
  device, compile-cache load, graph capture, first batch: the runner's own split), the extraction of
  every frame (`--pool 4` by default), and the exit from its last write (the tree's own exit path:
  `lseg_trt.cli.leave` where it has one);
- commands: the whole `lseg-trt extract --weights W --images F --pool 4` as a user runs it (wall, run
  phase, last write to exit), and `segment` / `wordfree` on one photo.
Writes fixed_cost.json and fixed_cost.md to OUT and prints the Markdown. Frames: `--frames` 1280x720 JPEGs
cut from the sample photos, made once under `--scratch`.

    python benchmarks/fixed_cost.py OUT --weights vit.ckpt --tree before=/tmp/before --tree after=. \\
        --conditions image,bytecode --repeats 2
    python benchmarks/fixed_cost.py /tmp/fc --weights tiny.ckpt --variant tiny_vit --frames 16 --tree now=. \\
        --conditions image --repeats 1 --device cpu
"""

from __future__ import annotations

import time

_STARTED = time.time()  # the child's first moment (interpreter start ends here)

import argparse  # noqa: E402 - after the clock
import json  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

FRAME_SIZE = (1280, 720)
LABELS = "person, car, tree, sky, road, building, other"


def make_frames(folder: Path, count: int) -> list[Path]:
    """`count` 1280x720 JPEGs cut from the sample photos (each scaled to cover the frame, then shifted)."""
    from PIL import Image

    from lseg_trt.images import samples

    frames = sorted(folder.glob("*.jpg"))
    if len(frames) == count:
        return frames
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    photos = []
    for path in samples().values():
        photo = Image.open(path).convert("RGB")
        scale = max(FRAME_SIZE[0] / photo.width, FRAME_SIZE[1] / photo.height) * 1.25
        photos.append(photo.resize((round(photo.width * scale), round(photo.height * scale))))
    for i in range(count):
        photo = photos[i % len(photos)]
        dx, dy = (
            (photo.width - FRAME_SIZE[0]) * (i * 37 % 100) // 100,
            (photo.height - FRAME_SIZE[1]) * (i * 53 % 100) // 100,
        )
        photo.crop((dx, dy, dx + FRAME_SIZE[0], dy + FRAME_SIZE[1])).save(folder / f"{i:06d}.jpg", quality=90)
    return sorted(folder.glob("*.jpg"))


def last_write(folder: Path) -> float:
    return max((p.stat().st_mtime for p in folder.rglob("*") if p.is_file()), default=float("nan"))


# ---- the child: one fresh process, stage by stage --------------------------------------------------------


def child(ns: argparse.Namespace) -> None:
    marks: dict[str, float] = {"started": _STARTED}
    import torch

    marks["import torch"] = time.time()
    from lseg_trt.artifacts import open_model
    from lseg_trt.extraction import FeatureExtractor, extract

    marks["import lseg_trt"] = time.time()
    source = open_model(weights=ns.weights, variant=ns.variant)
    marks["weights"] = time.time()
    size = tuple(int(v) for v in ns.size.split("x"))
    extractor = FeatureExtractor.from_source(
        source, ns.backend, size, batch_size=ns.batch, device=ns.device, cache_dir=ns.cache
    )
    extractor.metadata["weights_sha256"]  # noqa: B018 - what a run records: the checkpoint's hash
    marks["backend choice and runner"] = time.time()
    extractor.activate()
    if extractor.device.type == "cuda":
        torch.cuda.synchronize(extractor.device)
    marks["activate and warm-up batch"] = time.time()
    summary = extract(extractor, ns.images, ns.out, pool=ns.pool, force=True)
    marks["run"] = time.time()
    marks["last write"] = last_write(Path(ns.out))
    record = {
        "marks": marks,
        "backend": extractor.runner.name,
        "runner_setup_s": dict(extractor.runner.setup_seconds),
        "run_s": summary.seconds,
        "items": summary.done,
    }
    print("FIXED_COST " + json.dumps(record), flush=True)
    marks["end"] = time.time()
    print(f"FIXED_COST_END {marks['end']}", flush=True)
    try:
        from lseg_trt.cli import leave
    except ImportError:  # a tree from before `leave`: the interpreter's own exit
        sys.exit(0)
    leave(0)


# ---- the parent ----------------------------------------------------------------------------------------


def python_env(src: Path, condition: str, pycache: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPYCACHEPREFIX",)}
    extra = os.environ.get("FIXED_COST_EXTRA_PATH")  # carried wheels (benchmarks/device_env.sh's /tmp/site)
    env["PYTHONPATH"] = os.pathsep.join([str(src), *([extra] if extra else [])])
    env["PYTHONUNBUFFERED"] = "1"
    if condition == "bytecode":
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(pycache)
    return env


def timed(cmd: list[str], env: dict[str, str], out: Path | None) -> dict:
    """Wall seconds of one fresh process, its output, and seconds from its last write under `out` to its exit."""
    start = time.time()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    end = time.time()
    if done.returncode not in (0, 1):
        raise SystemExit(f"{' '.join(cmd[:6])} ... failed ({done.returncode}):\n{done.stderr[-3000:]}")
    result = {"launched": start, "exited": end, "wall_s": end - start, "stdout": done.stdout, "stderr": done.stderr}
    if out is not None:
        result["last_write_to_exit_s"] = end - last_write(out)
    return result


def stage_run(ns: argparse.Namespace, src: Path, env: dict[str, str], out: Path) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        "--weights",
        ns.weights,
        "--images",
        str(ns.frames_dir),
        "--out",
        str(out),
        "--size",
        ns.size,
        "--batch",
        str(ns.batch),
        "--pool",
        str(ns.pool),
        "--device",
        ns.device,
        "--cache",
        str(ns.cache),
        "--backend",
        ns.backend,
        *(["--variant", ns.variant] if ns.variant else []),
    ]
    run = timed(cmd, env, None)
    lines = [line[11:] for line in run["stdout"].splitlines() if line.startswith("FIXED_COST ")]
    if not lines:  # the child failed before its record (rc 1 is a traceback there, not skipped items)
        raise SystemExit(f"the stage child of {src} gave no record:\n{run['stderr'][-3000:]}")
    record = json.loads(lines[0])
    marks = record["marks"]
    stages = {"interpreter start": marks["started"] - run["launched"]}
    names = list(marks)
    for before, name in zip(names[:-2], names[1:-1], strict=True):  # up to "run"
        stages[name] = marks[name] - marks[before]
    stages["exit after last write"] = run["exited"] - marks["last write"]
    stages["whole process"] = run["wall_s"]
    return {
        "stages": stages,
        "backend": record["backend"],
        "runner_setup_s": record["runner_setup_s"],
        "run_s": record["run_s"],
    }


def command_runs(ns: argparse.Namespace, env: dict[str, str], scratch: Path) -> dict[str, dict]:
    """The commands a user types, whole, in fresh processes."""
    cli = [sys.executable, "-m", "lseg_trt.cli"]
    model = [
        "--weights",
        ns.weights,
        "--device",
        ns.device,
        "--cache",
        str(ns.cache),
        *(["--variant", ns.variant] if ns.variant else []),
    ]
    photo = str(ns.photo)
    commands = {
        f"extract --pool {ns.pool} ({ns.frames} frames)": (
            [
                *cli,
                "extract",
                *model,
                "--images",
                str(ns.frames_dir),
                "--pool",
                str(ns.pool),
                "--sizes",
                ns.size,
                "--out",
                str(scratch / "cli"),
                "--force",
            ],
            scratch / "cli",
        ),
        "segment (one photo)": (
            [*cli, "segment", *model, "--image", photo, "--labels", LABELS, "--out", str(scratch / "seg" / "s.png")],
            scratch / "seg",
        ),
        "wordfree (one photo)": (
            [*cli, "wordfree", *model, "--image", photo, "--out", str(scratch / "wf" / "w.png")],
            scratch / "wf",
        ),
    }
    results = {}
    for name, (cmd, out) in commands.items():
        if name.split()[0] not in ns.commands.split(","):
            continue
        out.mkdir(parents=True, exist_ok=True)
        run = timed(cmd, env, out)
        phase = re.search(r" in ([\d.]+)s \(", run["stdout"])
        results[name] = {
            "wall_s": run["wall_s"],
            "run_phase_s": float(phase.group(1)) if phase else None,
            "last_write_to_exit_s": run["last_write_to_exit_s"],
            "backend_line": next(
                (
                    line
                    for line in run["stdout"].splitlines() + run["stderr"].splitlines()
                    if line.startswith("backend:")
                ),
                None,
            ),
        }
    return results


def median_of(runs: list[dict], *path: str) -> float | None:
    values = []
    for run in runs:
        for key in path:
            run = run.get(key) if isinstance(run, dict) else None
        if isinstance(run, int | float):
            values.append(run)
    return statistics.median(values) if values else None


def render(record: dict) -> str:
    s = record["settings"]
    lines = [
        "# A run's fixed cost, stage by stage (issue 24)",
        "",
        f"{s['frames']} 1280x720 JPEG frames cut from the sample photos; weights {s['weights_name']}; backend "
        f"{s['backend']} at {s['size']}, batch {s['batch']}, pool {s['pool']}, device {s['device']}; median of "
        f"{s['repeats']} fresh processes each, after one untimed run that filled the caches.",
        "",
    ]
    keys = list(record["results"])
    for what in ("stages", "commands"):
        rows: dict[str, list[str]] = {}
        for key in keys:
            runs = record["results"][key][what]
            names = list(runs[0]["stages"] if what == "stages" else runs[0]) if runs else []
            for name in names:
                value = median_of(runs, "stages", name) if what == "stages" else median_of(runs, name, "wall_s")
                rows.setdefault(name, []).append("-" if value is None else f"{value:.2f}")
                if what == "commands":
                    for sub in ("run_phase_s", "last_write_to_exit_s"):
                        v = median_of(runs, name, sub)
                        rows.setdefault(f"{name}: {sub.replace('_s', '').replace('_', ' ')}", []).append(
                            "-" if v is None else f"{v:.2f}"
                        )
        lines += [f"## {what} (seconds)", "", "| | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
        lines += [f"| {name} | " + " | ".join(values) + " |" for name, values in rows.items()]
        lines.append("")
    for key in keys:
        backends = {run["backend"] for run in record["results"][key]["stages"]}
        setup = record["results"][key]["stages"][0]["runner_setup_s"] if record["results"][key]["stages"] else {}
        lines.append(
            f"- {key}: backend {', '.join(sorted(backends))}; runner set-up of the first timed process "
            + ", ".join(f"{k} {v:.2f} s" for k, v in setup.items())
        )
        commands = record["results"][key]["commands"]
        lines += [f"  - {name}: `{run['backend_line']}`" for name, run in (commands[0] if commands else {}).items()]
    lines.append("")
    return "\n".join(lines)


def parent(ns: argparse.Namespace) -> None:
    out = Path(ns.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    scratch = Path(ns.scratch)
    ns.frames_dir = scratch / "frames"
    ns.cache = scratch / "models"
    trees = {}
    for spec in ns.tree:
        name, _, path = spec.partition("=")
        src = Path(path).resolve()
        src = src / "src" if (src / "src" / "lseg_trt").is_dir() else src
        if not (src / "lseg_trt").is_dir():
            raise SystemExit(f"--tree {spec}: no lseg_trt package under {path}")
        trees[name] = src
    first = next(iter(trees.values()))
    env0 = python_env(first, "image", scratch / "pycache")
    sys.path.insert(0, str(first))  # the frames are cut by the first tree's `samples`
    make_frames(ns.frames_dir, ns.frames)
    ns.photo = sorted(ns.frames_dir.glob("*.jpg"))[0]
    hw = subprocess.run([sys.executable, "-m", "lseg_trt.cli", "hwinfo"], env=env0, capture_output=True, text=True)
    (out / "hwinfo.md").write_text(hw.stdout)
    results: dict[str, dict] = {}
    conditions = ns.conditions.split(",")
    for condition in conditions:
        for name, src in trees.items():
            key = f"{name} ({condition})"
            env = python_env(src, condition, scratch / "pycache")
            print(f"{key}: untimed run to fill the caches ...", file=sys.stderr, flush=True)
            stage_run(ns, src, env, scratch / "stages")
            command_runs(ns, env, scratch)
            results[key] = {"src": str(src), "stages": [], "commands": []}
        for repeat in range(ns.repeats):
            for name, src in trees.items():  # interleaved, so drift on the machine hits every tree alike
                key = f"{name} ({condition})"
                env = python_env(src, condition, scratch / "pycache")
                print(f"{key}: timed {repeat + 1}/{ns.repeats} ...", file=sys.stderr, flush=True)
                results[key]["stages"].append(stage_run(ns, src, env, scratch / "stages"))
                commands = command_runs(ns, env, scratch)
                results[key]["commands"].append(commands)
    record = {
        "settings": {
            "frames": ns.frames,
            "weights_name": Path(ns.weights).name,
            "backend": ns.backend,
            "size": ns.size,
            "batch": ns.batch,
            "pool": ns.pool,
            "device": ns.device,
            "repeats": ns.repeats,
            "conditions": conditions,
            "trees": {k: str(v) for k, v in trees.items()},
        },
        "results": results,
    }
    markdown = render(record)
    (out / "fixed_cost.json").write_text(json.dumps(record, indent=2) + "\n")
    (out / "fixed_cost.md").write_text(markdown)
    print(markdown)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out_dir", nargs="?")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--weights", required=True, help="a checkpoint file (lang-seg format)")
    p.add_argument("--variant")
    p.add_argument("--tree", action="append", default=[], help="NAME=PATH of a checkout (or its src); repeatable")
    p.add_argument("--conditions", default="image,bytecode", help="image, bytecode or both [%(default)s]")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--frames", type=int, default=1024)
    p.add_argument("--size", default="480x640")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--pool", type=int, default=4)
    p.add_argument("--device", default="cuda")
    p.add_argument("--backend", default="auto")
    p.add_argument("--scratch", default="/tmp/fixed_cost")
    p.add_argument("--commands", default="extract,segment,wordfree", help="whole commands to time [%(default)s]")
    p.add_argument("--images", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--cache", help=argparse.SUPPRESS)
    ns = p.parse_args()
    if ns.child:
        child(ns)
    elif not ns.out_dir or not ns.tree:
        p.error("OUT and at least one --tree are needed")
    else:
        parent(ns)


if __name__ == "__main__":
    main()
