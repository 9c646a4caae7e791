"""The README and docs/ stay true to the tree: the layout names every module, the files their commands post exist
in the class folder they are named under, and every link between the pages reaches a page and a heading."""

from __future__ import annotations

import re
import subprocess
import sys

from service.config import Limits
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


def test_the_decoding_budget_is_the_one_figure_service_config_declares():
    """A figure stated on several pages is the code's: each page that names a worker's decoding budget gives
    service/config.py's default (deployment.md once said 1 GB against 768 MiB)."""
    budget = Limits().decode_budget_bytes
    texts = {page.name: page.read_text() for page in PAGES}
    texts["deployment.yaml"] = (ROOT / "deploy" / "k8s" / "base" / "deployment.yaml").read_text()
    stated = []
    for name, text in texts.items():
        text = re.sub(r"\s+", " ", text)
        for match in re.finditer(
            r"decod(?:ing|e)[ _]budget(?:_bytes)?\W[^.;]{0,40}?(\d+(?:\.\d+)?) ?(MiB|GiB|MB|GB)", text
        ):
            number, unit = float(match[1]), match[2]
            stated.append((name, match[0], number * {"MiB": 2**20, "GiB": 2**30, "MB": 1e6, "GB": 1e9}[unit]))
    assert len({name for name, _, _ in stated}) >= 3, stated  # serving.md, deployment.md, deployment.yaml at least
    wrong = [(name, words) for name, words, value in stated if value != budget]
    assert not wrong, f"pages that state another decoding budget than service/config.py's {budget} bytes: {wrong}"


def test_the_test_counts_the_pages_state_are_the_files_own():
    """`tests/test_bulk.py`'s 9: a count of a test file's tests that a page states is what pytest collects there
    (the README once said five of seven)."""
    counts = {}
    for page in PAGES:
        text = re.sub(r"\s+", " ", page.read_text())
        for match in re.finditer(r"`(tests/test_\w+\.py)`'s (\d+)\b", text):
            counts.setdefault(match[1], set()).add((page.name, int(match[2])))
    assert "tests/test_bulk.py" in counts, "the README states how many tests tests/test_bulk.py holds"
    for path, stated in counts.items():
        listed = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                                 path], cwd=ROOT, capture_output=True, text=True, timeout=300)  # fmt: skip
        collected = len([line for line in listed.stdout.splitlines() if line.startswith(f"{path}::")])
        assert collected and {n for _, n in stated} == {collected}, (path, stated, collected, listed.stdout[-2000:])


def _bash_blocks(page) -> list[list[str]]:
    blocks = re.findall(r"^ *```bash\n(.*?)^ *```", page.read_text(), flags=re.MULTILINE | re.DOTALL)
    return [[line.strip() for line in block.replace("\\\n", " ").splitlines() if line.strip()] for block in blocks]


def test_every_command_block_runs_in_a_new_shell():
    """A block of README.md or docs/ that runs the venv's commands (python, bentoml, ray, torchrun) activates the
    venv before them or names them as .venv/bin/...: pasted into a new shell after `make install`, it does not
    stop at `No module named 'torch'`. tests/test_own_photos_end_to_end.py runs the quickstart block so."""
    venv_commands = {"python", "bentoml", "ray", "torchrun", "pytest", "pip"}
    bare = []
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for block in _bash_blocks(page):
            activated = False
            for line in block:
                activated = activated or line.startswith("source .venv/bin/activate")
                words = [w for w in line.split("#")[0].split() if not re.match(r"^[A-Z_]+=", w)]
                if words and words[0] in venv_commands and not activated:
                    bare.append(f"{page.name}: {line}")
    assert not bare, f"commands that need the activated venv in a block that does not activate it: {bare}"
