"""`python -m service.predict`: real files, real ONNX Runtime sessions on tiny graphs, a temporary model store.

Torch-free (the graphs come from tests/tiny_onnx.py): .ci/serving-pythons runs it without torch. That its
probabilities equal `/classify`'s for the same files, on the trained digits model, is checked against a real
`bentoml serve` in tests/test_service.py.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.errors import UserError
from service.config import Limits
from service.decode import decode
from service.files import decode_file, list_images
from service.models import Model
from service.predict import predict, read_rows
from service.runtime import Graph
from tests.oracles import eval_crop
from tests.stores import model_home, store_graphs
from tests.tiny_onnx import tiny_graph, tiny_probabilities

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def graphs(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("graphs")
    return {
        "a": tiny_graph(folder / "a.onnx", seed=0),
        "b": tiny_graph(folder / "b.onnx", seed=1),
        "letters": tiny_graph(folder / "letters.onnx", labels=list("abcdefghij")),
        "small": tiny_graph(folder / "small.onnx", crop_size=16),
    }


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Nine images of several sizes and formats in two folders, a file that is not an image, a truncated
    PNG and a text file a folder search skips."""
    root = tmp_path_factory.mktemp("photos")
    (root / "b" / "deeper" / "empty").mkdir(parents=True)
    rng = np.random.default_rng(0)
    # distinct mean colours, so the tiny graphs tell the images apart; 47 px wide, so that the resize truncates
    # (32 x 51 / 47 = 34.7) and a crop offset rounds half to even (58 rows -> 39, (39 - 32) / 2 = 3.5 -> 4)
    for i in range(6):
        pixels = np.clip(rng.normal(40 * i, 30, (30 + 7 * i, 47, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(root / f"{i}.png")
    Image.fromarray(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)).save(root / "b" / "photo.jpg", quality=90)
    Image.fromarray(rng.integers(0, 256, (20, 20), dtype=np.uint8)).save(root / "b" / "deeper" / "gray.TIF")
    Image.fromarray(rng.integers(0, 256, (33, 31, 4), dtype=np.uint8)).save(root / "b" / "rgba.png")
    (root / "b" / "not-an-image.png").write_text("this is not an image")
    png = (root / "0.png").read_bytes()
    (root / "b" / "truncated.png").write_bytes(png[: len(png) // 2])
    (root / "b" / "notes.txt").write_text("not listed: a folder search looks for image files only")
    return root


def expected_probabilities(seed: int, paths: list[Path]) -> np.ndarray:
    """What tiny_graph(seed=seed) computes for each file: the mean colour of its eval crop (Pillow's RGB: alpha
    dropped, grey repeated; tests/oracles.py), through the graph's formula in numpy (tests/tiny_onnx.py), neither the
    service's decoding nor ONNX Runtime. None of these files is large enough for JPEG's draft mode."""
    colours = []
    for path in paths:
        with Image.open(path) as image:
            colours.append(eval_crop(image.convert("RGB"), 32, 32).reshape(-1, 3).mean(0))
    return tiny_probabilities(seed, np.stack(colours))


def table(rows: list[dict]) -> np.ndarray:
    """[N, C] probabilities rebuilt from rows written with the top-k at the full label count."""
    out = np.zeros((len(rows), len(rows[0]["top_k"])))
    for n, row in enumerate(rows):
        for entry in row["top_k"]:
            out[n, entry["index"]] = entry["probability"]
    return out


def test_folders_list_sorted_and_recursive_files_as_given(photos):
    listed = [p.relative_to(photos).as_posix() for p in list_images([photos / "b", photos / "3.png"])]
    assert listed == ["b/deeper/gray.TIF", "b/not-an-image.png", "b/photo.jpg", "b/rgba.png", "b/truncated.png",
                      "3.png"]  # fmt: skip
    assert list_images([photos / "b" / "notes.txt"]) == [photos / "b" / "notes.txt"]  # a file named is a file read
    with pytest.raises(UserError, match="no such file or folder: .*missing"):
        list_images([photos / "missing"])


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_unreadable_files_are_listed_with_their_error_and_the_rest_classified(graphs, photos, tmp_path, suffix):
    out = tmp_path / f"rows{suffix}"
    # batches of 3 images, decoded in 2 spawned processes: the rows still come out in the files' order
    summary = predict(str(graphs["a"]), [photos], out, top_k=10, batch_size=3, workers=2)
    assert (summary.classified, summary.unreadable) == (9, 2)
    rows = read_rows(out)
    paths = list_images([photos])
    assert [r["path"] for r in rows] == [str(p) for p in paths]
    errors = {Path(r["path"]).name: r["error"] for r in rows if r["error"]}
    assert errors == {
        "not-an-image.png": f"image {photos / 'b' / 'not-an-image.png'} is not an image in a supported format "
        "(PNG, JPEG, GIF, BMP, TIFF, WEBP, PPM, MPO)",
        "truncated.png": errors["truncated.png"],
    }
    assert errors["truncated.png"].startswith(f"image {photos / 'b' / 'truncated.png'} is truncated or corrupt")
    assert all(r["label"] is None and r["probability"] is None for r in rows if r["error"])
    good = [r for r in rows if not r["error"]]
    np.testing.assert_allclose(table(good), expected_probabilities(0, [Path(r["path"]) for r in good]), rtol=0,
                               atol=1e-6)  # fmt: skip
    for r in good:
        assert r["label"] == r["top_k"][0]["label"] == str(r["index"])
        assert r["probability"] == r["top_k"][0]["probability"] == max(e["probability"] for e in r["top_k"])

    # only unreadable files: their batch holds no pixels, and the run still writes their rows
    bad = [photos / "b" / "not-an-image.png", photos / "b" / "truncated.png"]
    assert (predict(str(graphs["a"]), bad, out, workers=0).classified, len(read_rows(out))) == (0, 2)


def test_csv_holds_the_columns_and_top_k_as_json(graphs, photos, tmp_path):
    out = tmp_path / "rows.csv"
    predict(str(graphs["a"]), [photos / "1.png", photos / "b" / "truncated.png"], out, top_k=3, workers=0)
    with open(out, newline="") as f:
        raw = list(csv.DictReader(f))
    assert list(raw[0]) == ["path", "label", "index", "probability", "top_k", "error"]
    assert [len(json.loads(r["top_k"])) if r["top_k"] else 0 for r in raw] == [3, 0]
    assert raw[0]["error"] == "" and raw[1]["label"] == "" and "truncated or corrupt" in raw[1]["error"]


def test_ensembles_vote_and_refuse_members_that_do_not_fit(graphs, photos):
    paths = [p for p in list_images([photos]) if p.suffix.lower() != ".txt" and p.name[0].isdigit()]
    a, b = expected_probabilities(0, paths), expected_probabilities(1, paths)
    meta = Graph(graphs["a"], "cpu").meta
    pixels = np.stack([decode(p.read_bytes(), i, Limits(), meta) for i, p in enumerate(paths)])
    soft = Model.load(f"{graphs['a']}+{graphs['b']}", device="cpu")(pixels)
    np.testing.assert_allclose(soft.scores, (a + b) / 2, rtol=0, atol=1e-6)
    weighted = Model.load([str(graphs["a"]), str(graphs["b"])], "weighted", [3, 1], device="cpu")(pixels)
    np.testing.assert_allclose(weighted.scores, (3 * a + b) / 4, rtol=0, atol=1e-6)
    assert (weighted.order[:, 0] == weighted.scores.argmax(1)).all()
    for other, message in [
        (
            "letters",
            r"members '.*a.onnx' and '.*letters.onnx' have different labels \(class 0 is '0' in '.*a.onnx' but 'a'",
        ),
        (
            "small",
            r"members .*a.onnx. and .*small.onnx. take different inputs \(resize_size 32 in .* but 16 in ",
        ),
    ]:
        with pytest.raises(UserError, match=message):
            Model.load(f"{graphs['a']}+{graphs[other]}", device="cpu")
    with pytest.raises(UserError, match="weighted voting needs one weight per member"):
        Model.load(f"{graphs['a']}+{graphs['b']}", "weighted", device="cpu")


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "service.predict", *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip


def test_store_tags_and_their_ensemble_from_the_command_line(graphs, photos, tmp_path):
    """Two store entries holding the same graph vote as one model; a mismatched pair is one line, exit 2."""
    env = model_home(tmp_path / "bentoml")
    store_graphs(env, ("one", graphs["a"]), ("same", graphs["a"]), ("letters", graphs["letters"]))

    single = cli("one", photos, "--out", tmp_path / "one.jsonl", "--top-k", "10", env=env)
    pair = cli("one+same:latest", photos, "--out", tmp_path / "pair.jsonl", "--top-k", "10", "--voting", "hard",
               env=env)  # fmt: skip
    assert single.returncode == 0 and pair.returncode == 0, single.stderr + pair.stderr
    assert "9 classified, 2 unreadable" in single.stdout and "images/s" in single.stdout
    one, two = read_rows(tmp_path / "one.jsonl"), read_rows(tmp_path / "pair.jsonl")
    assert [r["error"] for r in one] == [r["error"] for r in two]
    good = [i for i, r in enumerate(one) if not r["error"]]
    assert [one[i]["index"] for i in good] == [two[i]["index"] for i in good]
    np.testing.assert_allclose(table([one[i] for i in good]), table([two[i] for i in good]), rtol=0, atol=1e-7)

    refused = cli("one+letters", photos, "--out", tmp_path / "no.csv", env=env)
    assert refused.returncode == 2 and not (tmp_path / "no.csv").exists()
    [line] = refused.stderr.strip().splitlines()
    assert line.startswith("error: ensemble members 'one:") and "and 'letters:" in line and "different labels" in line
    for args, message in [
        (["missing-model", photos], "error: model 'missing-model' is neither an .onnx file nor in the BentoML"),
        (["one", tmp_path / "nowhere"], "error: no such file or folder:"),
        (["one", photos, "--top-k", "0"], "error: --top-k must be at least 1"),
        (["one", photos / "b" / "deeper" / "empty"], "error: no image files in "),
    ]:
        result = cli(*args, "--out", tmp_path / "x.csv", env=env)
        assert result.returncode == 2 and result.stderr.strip().splitlines() == [result.stderr.strip()], result.stderr
        assert result.stderr.startswith(message), result.stderr
        assert not (tmp_path / "x.csv").exists()  # refused before anything is written
    wrong_suffix = cli("one", photos, "--out", tmp_path / "rows.parquet", env=env)
    assert wrong_suffix.returncode == 2 and "--out must end in .csv or .jsonl" in wrong_suffix.stderr


def test_decoded_pixels_are_the_uploads(graphs, photos):
    """Reading from disk adds nothing to decoding: the bytes a file holds, decoded as an upload would be."""
    meta = Graph(graphs["a"], "cpu").meta
    for path in [photos / "b" / "photo.jpg", photos / "b" / "rgba.png"]:
        decoded = decode_file(path, Limits(), meta)
        assert np.array_equal(decoded.pixels, decode(path.read_bytes(), 0, Limits(), meta))
    big = decode_file(photos / "b" / "photo.jpg", Limits(max_image_bytes=100), meta)
    assert big.pixels is None and big.error.endswith("bytes; the limit is 100")
