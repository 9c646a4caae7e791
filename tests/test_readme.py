"""The README stays true to the tree: its layout names every module, and the files its commands post exist
in the class folder they are named under."""

from __future__ import annotations

import re

from tests.conftest import ROOT

README = (ROOT / "README.md").read_text()


def _layout() -> str:
    section = README[README.index("## Layout") :]
    return section[section.index("```") + 3 : section.index("```", section.index("```") + 3)]


def test_the_layout_names_every_module_and_folder():
    layout = _layout()
    packages = ["core", "training", "export", "service", "deploy", "bench"]
    files = [
        f"{package}/{f.name}"
        for package in packages
        for f in sorted((ROOT / package).iterdir())
        if f.suffix in (".py", ".sh", ".j2") and f.name != "__init__.py"
    ]
    missing = [f for f in files if not re.search(rf"\b{re.escape(f.split('/')[1])}", layout)]
    assert not missing, f"README's Layout section does not name {missing}"
    folders = {line.split()[0] for line in layout.splitlines() if line[:1].strip() and line.split()[0].endswith("/")}
    assert folders >= {f"{p}/" for p in packages}
    assert all((ROOT / f).is_dir() for f in folders), folders


def test_the_digits_files_the_readme_posts_exist_in_their_class_folder(digits_root):
    named = set(re.findall(r"data/digits/((?:train|val|test)/\d/\d+\.png)", README))
    assert named, "the README names no digits file"
    missing = [n for n in sorted(named) if not (digits_root / n).is_file()]
    assert not missing, f"README posts digits files that are not there: {missing}"
