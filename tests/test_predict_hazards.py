"""`python -m service.predict` over a folder holding what a shared disk may hold: a link to /dev/zero, a FIFO named
like an image, a file whose name is not UTF-8, a sub-folder that cannot be listed, a file that holds more than its
size says. Each is one row with its error (or, for the name, its label), every other file is classified, the run
ends with exit status 0 and nothing hangs. Torch-free and fast: tests/tiny_onnx.py's graph."""

from __future__ import annotations

import ctypes
import os
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from service.config import Limits
from service.files import decode_file, list_images, shown_path
from service.predict import predict, read_rows
from tests.conftest import ROOT
from tests.tiny_onnx import tiny_graph

PR_CAPBSET_DROP, CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 24, 1, 2
MEMORY = 4 * 1024**3  # address space of the run: /dev/zero read to its end would pass it at once


@pytest.fixture(scope="module")
def graph(tmp_path_factory) -> Path:
    return tiny_graph(tmp_path_factory.mktemp("graph") / "tiny.onnx")


def image(path: Path | bytes, shade: int) -> None:
    Image.fromarray(np.full((20, 24, 3), shade, np.uint8)).save(path, format="PNG")


@pytest.fixture
def hazards(tmp_path) -> Path:
    root = tmp_path / "photos"
    (root / "sub").mkdir(parents=True)
    (root / "locked").mkdir()
    for i in range(3):
        image(root / f"{i}.png", 60 * i)
    image(root / "locked" / "hidden.png", 7)
    os.symlink("/dev/zero", root / "zero.png")
    os.mkfifo(root / "pipe.png")
    try:
        image(os.fsencode(root / "sub") + b"/caf\xe9.png", 99)
    except OSError:  # a filesystem that takes UTF-8 names only
        pytest.skip("this filesystem refuses a name that is not UTF-8")
    os.chmod(root / "locked", 0)
    yield root
    os.chmod(root / "locked", 0o755)


def drop_root_reads() -> None:
    """Run as root, keep the child from reading past permissions: drop the two capabilities that let root read
    any folder (from the bounding set, so the exec'd process does not get them back)."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def can_lock(folder: Path) -> bool:
    """Whether a child process run as `limited` runs finds `folder` (mode 000) unreadable."""
    probe = [sys.executable, "-c", f"import os; os.listdir({str(folder)!r})"]
    try:
        done = subprocess.run(probe, preexec_fn=limited, capture_output=True, timeout=60)
    except subprocess.SubprocessError:
        return False
    return done.returncode != 0


def memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY, MEMORY))


def limited() -> None:
    memory()
    if os.geteuid() == 0:
        drop_root_reads()


@pytest.mark.parametrize(("suffix", "workers"), [(".csv", "2"), (".jsonl", "0")])
def test_every_hazard_is_a_row_and_the_run_ends(graph, hazards, tmp_path, suffix, workers):
    out = tmp_path / f"rows{suffix}"
    command = [sys.executable, "-m", "service.predict", str(graph), str(hazards), "--out", str(out),
               "--workers", workers]  # fmt: skip
    locked = can_lock(hazards / "locked")  # root that cannot drop its reads: the folder lists
    done = subprocess.run(command, cwd=ROOT, preexec_fn=limited if locked else memory, capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {row["path"]: row for row in read_rows(out)}
    name = str(hazards)
    assert rows[f"{name}/zero.png"]["error"] == (
        f"image {name}/zero.png is a character device, not a regular file: only regular files are read"
    )
    assert rows[f"{name}/pipe.png"]["error"] == (
        f"image {name}/pipe.png is a named pipe (FIFO), not a regular file: only regular files are read"
    )
    latin = rows[f"{name}/sub/caf\\xe9.png"]  # the byte that is not UTF-8 written as \xNN
    assert latin["error"] is None and latin["label"] is not None
    for i in range(3):
        assert rows[f"{name}/{i}.png"]["error"] is None
    if locked:
        assert rows[f"{name}/locked"]["error"] == f"folder {name}/locked cannot be read: Permission denied"
        assert f"{name}/locked/hidden.png" not in rows
        assert len(rows) == 7 and done.stdout.startswith("4 classified, 3 unreadable")
    else:  # root that cannot drop its reads: the folder lists, and its image is a row like the others
        assert rows[f"{name}/locked/hidden.png"]["error"] is None
        assert len(rows) == 7 and done.stdout.startswith("5 classified, 2 unreadable")


def test_a_folder_that_cannot_be_listed_is_listed_itself(hazards):
    """In this process (root reads any folder): what list_images does with the error os.walk reports."""
    listed = list_images([hazards])
    names = [p.relative_to(hazards).as_posix() if isinstance(p, Path) else p for p in listed]
    if os.access(hazards / "locked", os.R_OK):  # root: the folder lists; the CLI test above drops root's reads
        assert "locked/hidden.png" in names
    else:
        assert "locked" in names and "locked/hidden.png" not in names
    assert names[:3] == ["0.png", "1.png", "2.png"] and "pipe.png" in names and "zero.png" in names


def test_a_file_is_read_to_the_limit_whatever_its_size_says(graph, tmp_path):
    """/proc files are regular and say size 0; one read whole would pass the limit. A folder named as a file, a
    dangling link and a file over its size are rows too."""
    limits = Limits(max_image_bytes=100)
    status = tmp_path / "status.png"
    status.symlink_to("/proc/self/status")
    if not status.exists() or os.stat(status).st_size != 0:
        pytest.skip("no /proc/self/status of size 0 here")
    decoded = decode_file(status, limits, {})
    assert decoded.error == (f"image {status} holds more than 100 bytes (more than its size said); the limit is 100")
    big = tmp_path / "big.png"
    big.write_bytes(b"\x89PNG" + b"0" * 200)
    assert decode_file(big, limits, {}).error == f"image {big} is 204 bytes; the limit is 100"
    dangling = tmp_path / "gone.png"
    dangling.symlink_to(tmp_path / "nowhere.png")
    assert decode_file(dangling, limits, {}).error == f"image {dangling} cannot be read: No such file or directory"
    assert decode_file(tmp_path, limits, {}).error == f"{tmp_path} is a folder, not an image file"


def test_names_that_are_not_utf8_are_written_escaped(graph, tmp_path):
    assert shown_path(b"/a/caf\xe9.png") == "/a/caf\\xe9.png"
    assert shown_path(os.fsdecode(b"/a/caf\xe9.png")) == "/a/caf\\xe9.png"
    assert shown_path("/a/café.png") == "/a/café.png"
    folder = tmp_path / "names"
    folder.mkdir()
    image(os.fsencode(folder) + b"/\xff\xfe.png", 10)
    image(folder / "café.png", 20)
    out = tmp_path / "rows.csv"
    summary = predict(str(graph), [folder], out, workers=0)
    assert (summary.classified, summary.unreadable) == (2, 0)
    assert sorted(r["path"] for r in read_rows(out)) == sorted([f"{folder}/\\xff\\xfe.png", f"{folder}/café.png"])
