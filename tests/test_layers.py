"""The package's layers, checked: no module imports a module of a higher layer, and no import cycle.

Read with `ast`, so function-level (lazy) imports count too. docs/architecture.md draws the same table.
"""

from __future__ import annotations

import ast
from pathlib import Path

import lseg_trt

ROOT = Path(lseg_trt.__file__).parent

# lowest first; a module belongs to the first layer that names it or a package above it
LAYERS: list[tuple[str, ...]] = [
    (
        "_version",
        "errors",
        "files",
        "names",
        "sizes",
        "metrics",
        "tolerances",
        "feature_tree",
        "hwinfo",
        "reports",
        "sidecars",
    ),
    ("images", "models", "tensorrt.compat", "tensorrt.options"),
    ("export", "tensorrt.builder", "info", "segment"),
    ("onnx_cache", "engines", "artifacts", "compiled_cache", "compile_workers"),
    ("backends",),
    ("bench", "bench_report", "fidelity", "compare", "figures", "extraction", "webdemo"),
    ("cli",),
]


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(p for p in parts if p != "__init__")


def layer_of(name: str) -> int:
    for index, members in enumerate(LAYERS):
        if any(name == m or name.startswith(m + ".") for m in members):
            return index
    raise AssertionError(f"lseg_trt.{name} is in no layer of tests/test_layers.py; add it there and to the docs")


def imports_of(path: Path) -> set[str]:
    """lseg_trt modules imported anywhere in the file (`from lseg_trt import x` counts as lseg_trt.x)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("lseg_trt.")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lseg_trt"):
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                is_module = (ROOT.parent / candidate.replace(".", "/")).with_suffix(".py").is_file() or (
                    ROOT.parent / candidate.replace(".", "/")
                ).is_dir()
                found.add(candidate if is_module else node.module)
    return {name[len("lseg_trt.") :] for name in found if name != "lseg_trt"} | (
        {"<root>"} if any(n == "lseg_trt" for n in found) else set()
    )


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports_of(p) for p in sorted(ROOT.rglob("*.py")) if module_name(p)}


def test_no_module_imports_a_higher_layer() -> None:
    wrong = []
    for module, deps in graph().items():
        for dep in deps:
            if dep == "<root>":
                wrong.append(f"{module} imports the package root (import the defining module instead)")
            elif layer_of(dep) > layer_of(module):
                wrong.append(f"{module} (layer {layer_of(module)}) imports {dep} (layer {layer_of(dep)})")
    assert not wrong, "\n".join(wrong)


def test_no_import_cycle() -> None:
    edges = graph()
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for dep in edges.get(node, ()):
            dep = dep if dep in edges else next((m for m in edges if dep.startswith(m + ".")), dep)
            if state.get(dep) == 1 and dep != node:
                raise AssertionError("import cycle: " + " -> ".join([*stack, node, dep]))
            if dep in edges and state.get(dep) is None:
                visit(dep, [*stack, node])
        state[node] = 2

    for module in edges:
        if state.get(module) is None:
            visit(module, [])
