"""The package's layering rule, read from the imports (ast) of every module.

Layers, lowest first (``../shared/DESIGN.md``, "Layout"): a module may import modules of its own
layer or lower ones, never higher. Every ``import`` counts, also those inside functions: an
import cycle hidden in a function is still a cycle. The network package ``mambah.nn`` may import
only the base modules, :mod:`mambah.physics` and the model-directory code.

The reference detector sits below the stages, not beside training: it is the detector response
with a known truth, and the reconstruction stages evaluate it directly in their ``"reference"``
mode (for exact closures); it imports nothing of the stages, the networks or the chain.
"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "mambah"

#: (module prefix, layer); the longest matching prefix decides
LAYERS: dict[str, int] = {
    "mambah": 0,
    "mambah._lazy": 0,
    "mambah._version": 0,
    "mambah.errors": 0,
    "mambah.random": 0,
    "mambah.log": 0,
    "mambah.progress": 0,
    "mambah.extras": 0,
    "mambah.io": 0,
    "mambah.physics": 1,
    "mambah.modeldir": 2,
    "mambah.batch": 2,
    "mambah.nn": 3,
    "mambah.store": 3,
    "mambah.generation": 4,
    "mambah.reference": 5,
    "mambah.reconstruction": 6,
    "mambah.pid": 7,
    "mambah.pipeline": 8,
    "mambah.production": 9,
    "mambah.simulation": 9,
    "mambah.validation": 10,
    "mambah.training": 11,
    "mambah.cli": 12,
    "mambah.__main__": 12,
}
#: what ``mambah.nn`` may import besides itself
NN_ALLOWED = ("mambah._lazy", "mambah._version", "mambah.errors", "mambah.random", "mambah.log",
              "mambah.progress", "mambah.extras", "mambah.io", "mambah.physics", "mambah.modeldir", "mambah.nn")


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(path: Path, root: Path, modules: set[str]) -> list[tuple[str, int]]:
    """``(imported mambah module, line)`` for every import statement of ``path``."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names if a.name.split(".")[0] == "mambah"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "mambah":
                continue
            for a in node.names:
                sub = f"{target}.{a.name}"
                out.append((sub if sub in modules else target, node.lineno))
    return out


def layer(module: str) -> int:
    best = max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len)
    return LAYERS[best]


def import_graph(root: Path = ROOT) -> dict[str, list[tuple[str, int]]]:
    files = sorted(root.rglob("*.py"))
    modules = {module_name(f, root) for f in files}
    return {module_name(f, root): imports_of(f, root, modules) for f in files}


def upward_imports(graph) -> list[str]:
    bad = []
    for mod, deps in graph.items():
        for dep, line in deps:
            if dep == mod:
                continue
            if layer(dep) > layer(mod):
                bad.append(f"{mod}:{line} imports {dep} (layer {layer(mod)} imports layer {layer(dep)})")
            if mod.startswith("mambah.nn") and not dep.startswith(NN_ALLOWED):
                bad.append(f"{mod}:{line} imports {dep} (mambah.nn may import only {', '.join(NN_ALLOWED)})")
    return sorted(set(bad), key=bad.index)


def cycles(graph) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w, _ in graph.get(v, ()):
            if w not in graph or w == v:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_every_module_has_a_layer():
    assert all(layer(m) >= 0 for m in import_graph())


def test_no_import_cycles():
    found = cycles(import_graph())
    assert not found, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_no_upward_imports():
    bad = upward_imports(import_graph())
    assert not bad, "imports against the layering rule:\n" + "\n".join(bad)


@pytest.fixture
def tree(tmp_path):
    shutil.copytree(ROOT, tmp_path / "mambah", ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path / "mambah"


def test_a_planted_cycle_is_found(tree):
    (tree / "physics" / "kinematics.py").write_text(
        (tree / "physics" / "kinematics.py").read_text() + "\n\ndef _f():\n    from mambah.physics import species\n")
    (tree / "physics" / "species.py").write_text(
        (tree / "physics" / "species.py").read_text() + "\n\ndef _g():\n    from mambah.physics.kinematics import eta\n")
    found = cycles(import_graph(tree))
    assert any({"mambah.physics.kinematics", "mambah.physics.species"} <= set(c) for c in found), found


def test_a_planted_upward_import_is_found(tree):
    (tree / "nn" / "preprocessing.py").write_text(
        (tree / "nn" / "preprocessing.py").read_text() + "\n\ndef _h():\n    from mambah.pid.chain import PidChain\n")
    bad = upward_imports(import_graph(tree))
    assert any(b.startswith("mambah.nn.preprocessing:") and "mambah.pid.chain" in b for b in bad), bad
