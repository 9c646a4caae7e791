"""The README and docs/ stay true to the tree: the layout names every module, the files their commands post exist
in the class folder they are named under, and every link between the pages reaches a page and a heading."""

from __future__ import annotations

import re

from tests.conftest import ROOT

README = (ROOT / "README.md").read_text()
PAGES = [ROOT / "README.md", ROOT / "bench" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


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
    text = "".join(page.read_text() for page in PAGES)
    named = set(re.findall(r"data/digits/((?:train|val|test)/\d/\d+\.png)", text))
    assert named, "the README and docs/ name no digits file"
    missing = [n for n in sorted(named) if not (digits_root / n).is_file()]
    assert not missing, f"README posts digits files that are not there: {missing}"


def _anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation but '-' and '_' dropped, spaces to '-'."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_link_between_the_pages_reaches_a_page_and_a_heading():
    assert len(PAGES) >= 5, PAGES
    broken = []
    for page in PAGES:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if target.startswith(("http://", "https://")):
                continue
            path, _, anchor = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            if not linked.exists():
                broken.append(f"{page.name}: {target} (no such file)")
            elif anchor and linked.suffix == ".md":
                headings = re.findall(r"^#+ (.+)$", linked.read_text(), flags=re.MULTILINE)
                if anchor not in {_anchor(h) for h in headings}:
                    broken.append(f"{page.name}: {target} (no such heading)")
    assert not broken, broken


def test_the_readme_stays_short():
    # the README is the way in; everything else has its page under docs/
    assert len(README.splitlines()) < 200
