"""The stairs run one way: `service` -> `core`; `export` -> `training` -> `core`.

The Bento packs `core/` and `service/` whole and carries no torch, so neither may import torch (or the
training and export code that needs it), even inside a function; and `training` must not reach up into
`export` or `service`. Every import statement of every module is read with `ast`, so a lazy import in a
rarely run branch is caught as well as one at the top. Torch-free: runs in .ci/serving-pythons too.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TORCH = {"torch", "torchvision"}
# what each package may not import (top-level names)
FORBIDDEN = {
    "core": TORCH | {"training", "export", "service"},
    "service": TORCH | {"training", "export"},
    "training": {"export", "service"},
    "export": {"service"},
}


def imported(path: Path) -> set[str]:
    """Top-level names of every module a file imports, wherever the import statement is."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_package_imports_above_its_step(package):
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"no modules in {package}/"
    wrong = {f"{f.relative_to(ROOT)}: {sorted(imported(f) & FORBIDDEN[package])}" for f in files}
    wrong = {w for w in wrong if not w.endswith(": []")}
    assert not wrong, f"{package} may not import {sorted(FORBIDDEN[package])}: {sorted(wrong)}"


def test_the_reader_catches_every_form_of_import(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("import torch.nn as nn\nfrom training.data import x\n\ndef f():\n    from export import graph\n")
    assert imported(source) == {"torch", "training", "export"}


def test_core_and_the_service_modules_import_without_loading_torch():
    """What the Bento runs, imported for real: torch must not arrive through a dependency either.

    service.service is left out: importing it reads serving.yaml and needs the model store; the `ast` check
    above covers its import lines, and tests/test_service.py serves the built Bento."""
    modules = [
        ".".join(f.relative_to(ROOT).with_suffix("").parts)
        for package in ("core", "service")
        for f in sorted((ROOT / package).rglob("*.py"))
        if f.stem not in ("__init__", "service")
    ]
    code = f"import importlib, sys\nfor m in {modules!r}: importlib.import_module(m)\n" + (
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision', 'training', 'export')))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]", f"imported along with core and service: {result.stdout.strip()}"


def test_the_bento_packs_core_and_service_whole():
    import yaml

    include = yaml.safe_load((ROOT / "bentofile.yaml").read_text())["include"]
    packages = {
        str(f.parent.relative_to(ROOT)) for package in ("core", "service") for f in (ROOT / package).rglob("*.py")
    }
    assert {f"{folder}/*.py" for folder in packages} <= set(include), (sorted(packages), include)
    assert not [p for p in include if p.startswith(("training", "export"))], include


def _module_imports(package: str) -> dict[str, set[str]]:
    """Each module of `package` -> the modules of `package` it imports, wherever the import statement is (a lazy
    import back is a circle too: the two modules can no longer be read, or moved, one without the other)."""
    found = {}
    for f in sorted((ROOT / package).rglob("*.py")):
        name = ".".join(f.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        names = set()
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module)
                names.update(f"{node.module}.{alias.name}" for alias in node.names)
        found[name] = {n for n in names if n.split(".")[0] == package}
    return {name: {n for n in names if n in found and n != name} for name, names in found.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of `graph` as a list of nodes, or None."""
    state: dict[str, int] = {}  # 1: on the path being walked, 2: done

    def walk(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := walk(nxt, [*path, nxt])):
                return found
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := walk(node, [node])):
            return found
    return None


def test_the_reader_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set(), "c": {"a"}}) is None


@pytest.mark.parametrize("package", ["core", "service"])
def test_no_module_imports_one_that_imports_it_back(package):
    assert _cycle(_module_imports(package)) is None
