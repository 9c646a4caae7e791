"""service/patches.py's `WORKAROUNDS` names every workaround of BentoML or uvicorn, and each guard holds and fires.

A module that imports a private BentoML name (`bentoml._internal`, `_bentoml_impl`, `_bentoml_sdk`, `bentoml_cli`),
uvicorn, h11 or circus relies on something that may change in any release: it must be in the list, say in its
docstring which version it was checked against, and have a guard. Torch-free.
"""

from __future__ import annotations

import ast
import importlib
import signal
from importlib import metadata

import pytest
from _bentoml_impl.server import allocator
from circus.sighandler import SysHandler

from service import gpus, stored
from service.patches import WORKAROUNDS, PatchMismatch
from tests.conftest import ROOT

PRIVATE = ("bentoml._internal", "_bentoml_impl", "_bentoml_sdk", "bentoml_cli", "uvicorn", "h11", "circus")
VERSION = metadata.version("bentoml")


def private_imports(source: str) -> set[str]:
    """The private BentoML, uvicorn, h11 and circus modules a file imports, wherever the import statement is."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return {n for n in names if any(n == p or n.startswith(f"{p}.") for p in PRIVATE)}


def test_the_reader_finds_private_imports_in_functions():
    source = "import bentoml\nimport h11\n\ndef f():\n    from bentoml._internal.utils import args\n"
    assert private_imports(source) == {"h11", "bentoml._internal.utils"}


def test_every_module_that_touches_a_private_name_is_listed():
    listed = {w.module for w in WORKAROUNDS}
    touching = {
        str(f.relative_to(ROOT)): sorted(found)
        for f in sorted((ROOT / "service").rglob("*.py"))
        if (found := private_imports(f.read_text()))
    }
    assert touching, "no service module imports a private name: the reader is broken"
    missing = {module: names for module, names in touching.items() if module not in listed}
    assert not missing, f"not in service/patches.py WORKAROUNDS: {missing}"


def test_at_most_five_workarounds():
    # the request path runs on BentoML's public API (service/http/app.py, mounted with @bentoml.asgi_app): what is
    # left is what that API cannot do, each module with its one line of why
    assert len(WORKAROUNDS) <= 5, [w.module for w in WORKAROUNDS]


@pytest.mark.parametrize("workaround", WORKAROUNDS, ids=lambda w: w.module)
def test_each_workaround_names_its_version_and_its_guard_holds(workaround):
    path = ROOT / workaround.module
    assert path.is_file(), f"{workaround.module} is listed but missing"
    docstring = ast.get_docstring(ast.parse(path.read_text())) or ""
    assert "1.4.40" in docstring, f"{workaround.module}'s docstring names no BentoML version it was checked against"
    module = importlib.import_module(workaround.module.removesuffix(".py").replace("/", "."))
    if workaround.guard:
        assert workaround.guard in docstring, f"{workaround.module}'s docstring does not name its guard"
        guard = getattr(module, workaround.guard)
        if workaround.guard == "check":
            guard()  # the installed BentoML has what it relies on


def test_the_gpu_guard_fires_when_the_allocator_reads_another_variable(monkeypatch):
    monkeypatch.setattr(allocator, "DISABLE_GPU_ALLOCATION_ENV", "BENTOML_NO_GPUS")
    with pytest.raises(PatchMismatch, match=rf"^service/gpus.py .* bentoml {VERSION} .*BENTOML_NO_GPUS"):
        gpus.check()


def test_the_worker_failure_guard_fires_when_circus_takes_sigusr1(monkeypatch):
    monkeypatch.setattr(SysHandler, "SIGNALS", [*SysHandler.SIGNALS, signal.SIGUSR1])
    with pytest.raises(PatchMismatch, match=rf"^service/stored.py .* bentoml {VERSION} .*SIGUSR1"):
        stored.check()
