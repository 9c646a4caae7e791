"""A serving.yaml (or a training recipe, read by the same bounded loader, core/schema.py) that is built to hang or
crash start-up is one short line and exit status 2, within seconds and bounded memory: an alias bomb, a recursive
alias, 500 levels of nesting, a file over the size bound, huge values and keys, thousands of mistakes.

Each file is real, written to tmp_path, and loaded in a subprocess the way start-up loads it (`load_or_exit`, what
`import service.service` runs first; `load_config` for a recipe) under a wall-clock timeout and an address-space
limit (resource.setrlimit), so a regression fails the test instead of taking the machine."""

from __future__ import annotations

import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.schema import MAX_BYTES, MAX_DEPTH, MAX_NODES
from tests.conftest import ROOT

MEMORY = 1024**3  # address space a loading process may take: idle it takes about 300 MB
SECONDS = 20  # within this or it is killed; each file here takes under a second on 2 cores
LINE = 400  # characters of the one error line at most


def bomb(levels: int = 9, width: int = 10) -> str:
    """Billion laughs inside a value, as the attack wrote it: `ensembles: {e: {members: *x8}}`."""
    anchors = ["  x0: &x0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    anchors += [f"  x{i}: &x{i} [{', '.join([f'*x{i - 1}'] * width)}]" for i in range(1, levels)]
    return "anchors:\n" + "\n".join(anchors) + f"\nmodels: [a]\nensembles: {{e: {{members: *x{levels - 1}}}}}\n"


HOSTILE = {
    "alias bomb": (bomb(), f"is refused: the document holds more than {MAX_NODES} values"),
    "alias bomb of long strings": (
        "s: &s " + "y" * 100_000 + "\nmodels: [*s, *s, *s, *s]\n",
        "is refused: the document's values hold more than",
    ),
    "recursive alias": ("models: &m [a, *m]\n", "is refused: the alias *m is used inside its own anchor"),
    "500 levels of lists": ("models: " + "[" * 500 + "]" * 500 + "\n", f"nested more than {MAX_DEPTH} deep"),
    "500 levels of mappings": (
        "models: " + "{a: " * 500 + "1" + "}" * 500 + "\n",
        f"nested more than {MAX_DEPTH} deep",
    ),
    "over the size bound": (
        "models: [a]\n" + "#" * MAX_BYTES + "\n",
        f"bytes; a serving config may hold at most {MAX_BYTES}",
    ),
    "a 200,000-character model tag": ("models: [" + "x" * 200_000 + "]\n", "characters cut"),
    "a 200,000-character value": ("models: [a]\ndevice: " + "z" * 200_000 + "\n", "(200000 characters)"),
    "a 1,000-character key": ("models: [a]\n" + "k" * 1000 + ": 1\n", "... (1000 characters)"),
    "a 1,000-character key twice": ("models: [a]\n" + ("k" * 1000 + ": 1\n") * 2, "is given twice"),
    "a 5,000-character tag": ("models: !" + "t" * 5000 + " [a]\n", "characters cut"),
    "5,000 mistakes": ("models: [" + ", ".join(["1"] * 5000) + "]\n", "and 4995 more mistakes"),
    "a long list where text goes": ("models: [a]\ndevice: [" + ", ".join(["1"] * 5000) + "]\n", "got [1, 1, 1"),
}


def limited() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY, MEMORY))


def run(code: str) -> tuple[subprocess.CompletedProcess, float]:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=SECONDS,
                          preexec_fn=limited)  # fmt: skip
    return done, time.perf_counter() - start


def one_line(done: subprocess.CompletedProcess, prefix: str, path: Path) -> str:
    """The one line on stderr, at most LINE characters besides the file's path, which it names."""
    assert done.returncode == 2, done.stderr[-2000:]
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(prefix), done.stderr[:2000]
    assert len(lines[0].replace(str(path), "PATH")) <= LINE, lines[0]
    return lines[0]


@pytest.mark.parametrize("name", HOSTILE)
def test_a_hostile_serving_yaml_is_one_short_line_and_exit_2(name, tmp_path):
    text, expected = HOSTILE[name]
    path = tmp_path / "serving.yaml"
    path.write_text(text)
    done, seconds = run(f"import service.config as c; c.load_or_exit({str(path)!r})")
    line = one_line(done, "error: serving config: ", path)
    assert expected in line
    assert seconds < SECONDS / 2


def test_the_size_bound_is_read_before_the_file(tmp_path):
    """A file over the bound is refused by its size; a file that is not regular (here /dev/zero, which never ends)
    is not read at all."""
    import service.config as c

    big = tmp_path / "big.yaml"
    big.write_bytes(b"models: [a]\n" + b"#" * (MAX_BYTES + 1))
    with pytest.raises(c.ConfigError, match=f"is {MAX_BYTES + 13} bytes"):
        c.read(big)
    link = tmp_path / "zero.yaml"
    link.symlink_to("/dev/zero")
    with pytest.raises(c.ConfigError, match="serving config not found"):
        c.read(link)


def test_a_file_within_the_bounds_still_loads(tmp_path):
    """Anchors, merge keys and a long comment within the bounds are a serving.yaml like any other."""
    import service.config as c

    text = ("limits: &l {max_images_per_request: 4}\nmodels: [a, b]\nensembles: {p: {members: &m [a, b]}, "
            "q: {members: *m}}\n" + "# " + "c" * (MAX_BYTES // 2) + "\n")  # fmt: skip
    config = c.loads(text, "serving.yaml")
    assert config.ensembles["q"].members == ["a", "b"] and config.limits.max_images_per_request == 4


RECIPES = {
    "alias bomb": (
        bomb().replace("models: [a]\nensembles: {e: {members:", "optim: {lr:").replace("}}\n", "}\n"),
        f"is refused: the document holds more than {MAX_NODES} values",
    ),
    "500 levels": ("optim: " + "[" * 500 + "]" * 500 + "\n", f"nested more than {MAX_DEPTH} deep"),
    "over the size bound": ("#" * (MAX_BYTES + 1) + "\n", f"a recipe may hold at most {MAX_BYTES}"),
    "a 200,000-character value": ("optim: {lr: " + "z" * 200_000 + "}\n", "(200000 characters)"),
}


@pytest.mark.parametrize("name", RECIPES)
def test_a_hostile_recipe_is_one_short_line(name, tmp_path):
    text, expected = RECIPES[name]
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    code = (
        "import sys; from core.errors import UserError, one_line; from training.config import load_config\n"
        f"try: load_config({str(path)!r})\n"
        "except UserError as e: print(one_line(e), file=sys.stderr); sys.exit(2)"
    )
    done, seconds = run(code)
    assert expected in one_line(done, "error: ", path)
    assert seconds < SECONDS / 2


def test_set_overrides_are_bounded_too():
    from core.errors import UserError
    from training.config import parse_overrides

    with pytest.raises(UserError, match=f"--set optim.lr: the value is not valid YAML: .*more than {MAX_DEPTH} deep"):
        parse_overrides(["optim.lr=" + "[" * 100 + "]" * 100])
    assert parse_overrides(["optim.lr=4e-4"]) == {"optim.lr": 4e-4}


def test_error_lines_quote_values_cut(tmp_path):
    """core/schema.py's pieces: a value, a key and a sentence are cut, whatever their size."""
    from core.schema import cut, shown, shown_text

    assert shown("digits-resnet1") == "'digits-resnet1'"
    assert len(shown("x" * 10**6)) < 100 and shown("x" * 10**6).endswith("(1000000 characters)")
    nested: list = []
    for _ in range(10_000):
        nested = [nested, "y" * 1000]
    assert len(shown(nested)) <= 128
    assert shown_text("k" * 1000).endswith("... (1000 characters)")
    assert len(cut("a" * 10**6 + " end")) < 350 and cut("a" * 10**6 + " end").endswith(" end")
    assert cut("two\nlines") == "two lines"
