"""The package's architecture as a test: rooms in layers, arrows pointing down, no cycles.

Bottom to top (a module may import from its own layer and the layers below, never above):

    base         _version, _io, _assets, _config, _cpu, errors, types   stdlib only
    data         decode, preprocess, MedMNIST, lesions        numpy + Pillow only
    runtime      export.runtime                               numpy + onnxruntime: the torch-free first guess
    classifiers  architectures, frozen, bundles, training    torch
    method       the Med-CAM maths                            no files, no console
    explainer    explainer bundles, meta-training
    explain      MedCAM (and the package's lazy public face)
    export       onnx_export
    evaluation   metrics, peers, harness, report, bench       only cli imports it
    cli          Typer commands, jobs, writers                the only room with rich and typer

``export.runtime`` sits low although it lives in ``export/``: ``MedCAM`` takes its first guess from
onnxruntime, and tools that embed the ONNX file import the runtime without torch. Every project import
counts — module level, inside functions and under ``TYPE_CHECKING``; a third-party import under
``TYPE_CHECKING`` (annotations only, never executed) does not.
"""

from __future__ import annotations

import ast
from collections.abc import Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("base", ("medcam_fast._version", "medcam_fast._io", "medcam_fast._assets", "medcam_fast._config", "medcam_fast._cpu",
              "medcam_fast.errors",
              "medcam_fast.types")),
    ("data", ("medcam_fast.data",)),
    ("runtime", ("medcam_fast.export.runtime",)),
    ("classifiers", ("medcam_fast.classifiers",)),
    ("method", ("medcam_fast.method",)),
    ("explainer", ("medcam_fast.explainer",)),
    ("explain", ("medcam_fast.explain", "medcam_fast")),
    ("export", ("medcam_fast.export",)),
    ("evaluation", ("medcam_fast.evaluation",)),
    ("cli", ("medcam_fast.cli",)),
]

#: Third-party packages a room must not import (at any depth of its own code).
FORBIDDEN: dict[str, set[str]] = {
    "base": {"torch", "numpy", "rich", "typer", "onnxruntime", "ray"},
    "data": {"torch", "rich", "typer", "onnxruntime", "onnx", "ray"},
    "runtime": {"torch", "rich", "typer", "onnx", "ray"},
    "classifiers": {"rich", "typer", "onnxruntime", "ray"},
    "method": {"rich", "typer", "onnxruntime", "safetensors", "PIL", "ray"},
    "explainer": {"rich", "typer", "ray"},  # multi-process training is torch.distributed, not Ray
    "explain": {"rich", "typer", "ray"},
    "export": {"rich", "typer", "ray"},
    "evaluation": {"rich", "typer", "ray"},
}


def sources() -> dict[str, str]:
    """Module name → source of every module of the installed tree (cli/ and export/ map into the package)."""
    out: dict[str, str] = {}
    for folder, package in (("medcam_fast", "medcam_fast"), ("cli", "medcam_fast.cli"),
                            ("export", "medcam_fast.export")):
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([package, *parts])] = path.read_text(encoding="utf-8")
    return out


def _is_package(name: str, modules: Mapping[str, str]) -> bool:
    return any(m.startswith(name + ".") for m in modules) or name == "medcam_fast"


def imports(name: str, source: str, modules: Mapping[str, str]) -> tuple[set[str], set[str]]:
    """(project modules, third-party top-level packages) that module ``name`` imports anywhere."""
    package = name if _is_package(name, modules) else name.rsplit(".", 1)[0]
    ours, theirs = set(), set()
    tree = ast.parse(source)
    typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
                   and "TYPE_CHECKING" in ast.unparse(block.test) for n in ast.walk(block)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "medcam_fast":
                    ours.add(a.name)
                elif id(node) not in typing_only:
                    theirs.add(a.name.split(".")[0])
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("medcam_fast"):
                if id(node) not in typing_only:
                    theirs.add(target.split(".")[0])
                continue
            for a in node.names:  # `from . import baselines` names a module
                sub = f"{target}.{a.name}"
                ours.add(sub if sub in modules else target)
    return ours, theirs


def layer_of(module: str) -> int:
    """Index in :data:`LAYERS` of the most specific prefix that matches ``module``."""
    best, best_len = -1, -1
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            inside = module == p or (module.startswith(p + ".") and p != "medcam_fast")  # the face is one module
            if inside and len(p) > best_len:
                best, best_len = i, len(p)
    assert best >= 0, f"{module} is in no layer: add it to LAYERS"
    return best


def violations(modules: Mapping[str, str]) -> list[str]:
    """Every upward import, forbidden third-party import and import cycle, one line each."""
    found: list[str] = []
    graph: dict[str, set[str]] = {}
    for name, source in modules.items():
        ours, theirs = imports(name, source, modules)
        graph[name] = {m for m in ours if m in modules and m != name}
        mine = layer_of(name)
        for target in sorted(graph[name]):
            if layer_of(target) > mine:
                found.append(f"{name} ({LAYERS[mine][0]}) imports {target} ({LAYERS[layer_of(target)][0]}), "
                             "a layer above")
        for pkg in sorted(theirs & FORBIDDEN.get(LAYERS[mine][0], set())):
            found.append(f"{name} ({LAYERS[mine][0]}) imports {pkg}")
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if nxt == "medcam_fast" or node == "medcam_fast":
                continue  # the lazy public face names everything; nothing depends on it at import time
            if state.get(nxt) == 1:
                found.append("cycle: " + " → ".join([*path[path.index(nxt):], nxt]))
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return found


def test_every_arrow_points_down_and_no_room_imports_what_it_must_not():
    assert violations(sources()) == []


def test_an_upward_import_is_caught():
    tree = sources()
    tree["medcam_fast.method.losses"] += "\nfrom ..explain import MedCAM\n"
    tree["medcam_fast.data.lesions"] += "\ndef f():\n    import torch\n"
    found = violations(tree)
    assert any(v.startswith("medcam_fast.method.losses (method) imports medcam_fast.explain (explain)") for v in found)
    assert "medcam_fast.data.lesions (data) imports torch" in found


def test_the_library_never_imports_cli_and_only_cli_imports_evaluation():
    tree = sources()
    tree["medcam_fast.explainer.meta"] += "\nfrom ..evaluation import metrics\n"
    tree["medcam_fast.export.onnx_export"] += "\nfrom medcam_fast.cli import jobs\n"
    found = violations(tree)
    assert any(v.startswith("medcam_fast.explainer.meta (explainer) imports medcam_fast.evaluation.metrics")
               for v in found)
    assert any(v.startswith("medcam_fast.export.onnx_export (export) imports medcam_fast.cli.jobs") for v in found)


def test_a_cycle_inside_a_room_is_caught():
    tree = sources()
    tree["medcam_fast.method.masking"] += "\nfrom .objective import Objective\n"
    assert any(v.startswith("cycle:") and "medcam_fast.method.masking" in v for v in violations(tree))
