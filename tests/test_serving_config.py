"""Every mistake in serving.yaml stops the service with one line on stderr and exit status 2: the key path, the
value and what is expected, never a traceback. The table runs through `load_or_exit`, the code the service runs
at import; a few files run through `import service.service` in a subprocess, and one through `bentoml serve`,
which shows both are the path a real start-up takes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from service.config import load_or_exit
from tests.conftest import ROOT

GOOD = """
device: cpu
default_model: a
models: [a, b]
ensembles:
  pair: {members: [a, b], voting: weighted, weights: [2, 1]}
batching: {max_batch_size: 8, max_latency_ms: 100, max_wait_ms: 5, sizes: [1, 4, 8]}
workers: 1
decoding: {processes: 0}
cuda: {cudnn_conv_algo_search: HEURISTIC, prefer_nhwc: false, cuda_graph: false}
limits: {max_images_per_request: 4, max_image_bytes: 1000, max_image_pixels: 1000}
"""

# (a line of GOOD replaced by another, or text appended, what the error line must say)
BAD = [
    # wrong type for each key
    (("device: cpu", "device: 1"), "device must be auto, cpu or cuda, got 1"),
    (("default_model: a", "default_model: [a]"), "default_model must be text"),
    (("models: [a, b]", "models: a"), "models must be a list of at least one model-store tag, got 'a'"),
    (("models: [a, b]", "models: [a, 2]"), "models.1 must be text, got 2"),
    (("  pair: {members: [a, b], voting: weighted, weights: [2, 1]}", "  pair: [a, b]"),
     "ensembles.pair must be a mapping of members, voting, weights, got ['a', 'b']"),
    (("weights: [2, 1]", "weights: [2, one]"), "ensembles.pair.weights.1 must be a number, got 'one'"),
    (("voting: weighted", "voting: majority"), "ensembles.pair.voting must be soft, weighted or hard, got 'majority'"),
    (("max_batch_size: 8,", "max_batch_size: eight,"),
     "batching.max_batch_size must be a whole number of at least 1, got 'eight'"),
    (("max_latency_ms: 100", "max_latency_ms: 1.5"),
     "batching.max_latency_ms must be a whole number of at least 1, got 1.5"),
    (("max_wait_ms: 5", "max_wait_ms: soon"), "batching.max_wait_ms must be a number of at least 0, got 'soon'"),
    (("sizes: [1, 4, 8]", "sizes: fixed"),
     "batching.sizes must be auto, none or a list of whole numbers of at least 1, got 'fixed'"),
    (("workers: 1", "workers: two"), "workers must be a whole number of at least 1, got 'two'"),
    (("workers: 1", "workers: true"), "workers must be a whole number of at least 1, got True"),
    (("processes: 0", "processes: 0.5"), "decoding.processes must be a whole number of at least 0, got 0.5"),
    (("prefer_nhwc: false", "prefer_nhwc: 'no'"), "cuda.prefer_nhwc must be true or false, got 'no'"),
    (("cudnn_conv_algo_search: HEURISTIC", "cudnn_conv_algo_search: 1"),
     "cuda.cudnn_conv_algo_search must be EXHAUSTIVE, HEURISTIC or DEFAULT, got 1"),
    (("max_image_bytes: 1000", "max_image_bytes: 10MB"),
     "limits.max_image_bytes must be a whole number of at least 1, got '10MB'"),
    (("limits: {", "limits: [1] #{"),
     "limits must be a mapping of max_images_per_request, max_image_bytes, max_image_pixels, max_body_bytes, "
     "max_json_bytes, decode_budget_bytes, decode_wait_ms, got [1]"),
    # negative and zero sizes
    (("max_images_per_request: 4", "max_images_per_request: -4"),
     "limits.max_images_per_request must be a whole number of at least 1, got -4"),
    (("max_image_pixels: 1000", "max_image_pixels: 0"),
     "limits.max_image_pixels must be a whole number of at least 1, got 0"),
    (("max_batch_size: 8,", "max_batch_size: -8,"),
     "batching.max_batch_size must be a whole number of at least 1, got -8"),
    (("max_wait_ms: 5", "max_wait_ms: -5"), "batching.max_wait_ms must be a number of at least 0, got -5"),
    (("sizes: [1, 4, 8]", "sizes: [-1, 8]"),
     "batching.sizes must be auto, none or a list of whole numbers of at least 1, got [-1, 8]"),
    (("processes: 0", "processes: -2"), "decoding.processes must be a whole number of at least 0, got -2"),
    (("sizes: [1, 4, 8]", "sizes: [1, 4]"),
     "batching.sizes [1, 4] must be distinct, ascending and end at batching.max_batch_size (8)"),
    # unknown keys at each level: the nearest valid keys, or those of the section when none is near
    (("workers: 1", "worker: 1"), "unknown serving.yaml key 'worker': did you mean workers? (in "),
    (("max_wait_ms: 5", "max_wait: 5"),
     "unknown serving.yaml key 'batching.max_wait': did you mean batching.max_wait_ms?"),
    (("processes: 0", "threads: 0"), "unknown serving.yaml key 'decoding.threads'; valid keys in decoding: processes"),
    (("cuda_graph: false", "cuda_graphs: false"),
     "unknown serving.yaml key 'cuda.cuda_graphs': did you mean cuda.cuda_graph?"),
    (("max_image_pixels: 1000", "max_pixels: 1000"),
     "unknown serving.yaml key 'limits.max_pixels': did you mean limits.max_image_pixels?"),
    (("weights: [2, 1]", "weights: [2, 1], wieghts: [1, 1]"),
     "unknown serving.yaml key 'ensembles.pair.wieghts': did you mean ensembles.pair.weights?"),
    # weights that do not fit the members, ensembles and defaults naming unknown models
    (("weights: [2, 1]", "weights: [2, 1, 1]"),
     "ensembles.pair.weights must be 2 non-negative numbers with a positive sum (one per member), got [2.0, 1.0, 1.0]"),
    (("weights: [2, 1]", "weights: [-1, 2]"),
     "ensembles.pair.weights must be 2 non-negative numbers with a positive sum"),
    (("weights: [2, 1]", "weights: [0, 0]"),
     "ensembles.pair.weights must be 2 non-negative numbers with a positive sum"),
    ((", weights: [2, 1]", ""), "ensembles.pair uses weighted voting but has no weights"),
    (("members: [a, b]", "members: [a, c]"), "ensembles.pair members ['c'] must be served models ['a', 'b']"),
    (("members: [a, b]", "members: []"), "ensembles.pair.members must be a list of at least one served model, got []"),
    (("default_model: a", "default_model: c"), "default_model 'c' is not one of models ['a', 'b']"),
    (("models: [a, b]", "models: [a, 'a:v2']"), "models names a model twice: ['a', 'a:v2']"),
    (("models: [a, b]", "models: []"), "models must be a list of at least one model-store tag, got []"),
    # the file itself
    (("device: cpu", "device: [cpu"), "is not valid YAML"),
    (("device: cpu", "- device: cpu"), "is not valid YAML"),
    # accepted once, though each served something else than the file says
    (("workers: 1", "workers: 1\nworkers: 2"), "is not valid YAML: key 'workers' is given twice (lines 8 and 9)"),
    (("max_wait_ms: 5", "max_wait_ms: 5, max_batch_size: 4"),
     "key 'max_batch_size' is given twice (lines 7 and 7): remove one"),
    (("sizes: [1, 4, 8]", "sizes: [1, 8, 4]"),
     "batching.sizes [1, 8, 4] must be distinct, ascending and end at batching.max_batch_size (8)"),
    (("sizes: [1, 4, 8]", "sizes: [1, 2, 512]"),
     "batching.sizes [1, 2, 512] must be distinct, ascending and end at batching.max_batch_size (8)"),
    (("sizes: [1, 4, 8]", "sizes: [1, 4, 4, 8]"), "batching.sizes [1, 4, 4, 8] must be distinct"),
    (("members: [a, b]", "members: [a, b, a]"),
     "ensembles.pair.members names ['a'] more than once; to count a member more, use voting: weighted"),
    (("models: [a, b]", "models: [a, b, a]"), "models names a model twice: ['a', 'b', 'a']"),
    (("models: [a, b]", "models: [a, 'b c']"), "models.1 'b c' is not a valid model-store tag"),
    (("models: [a, b]", "models: [a, 'b:']"), "models.1 'b:' is not a valid model-store tag"),
    (("models: [a, b]", "models: [a, '-b']"), "models.1 '-b' is not a valid model-store tag"),
    (("default_model: a", "default_model: a\nmodels: [a]"), "key 'models' is given twice"),
    (("workers: 1", "workers: 1\nconnections: {max_open: 0}"),
     "connections.max_open must be a whole number of at least 1, got 0"),
]  # fmt: skip


def write(config: str, tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(config)
    return path


def start_up(path: Path, command: list[str] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "SERVING_CONFIG": str(path), "BENTOML_DO_NOT_TRACK": "true"}
    command = command or [sys.executable, "-c", "import service.service"]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def one_line(returncode: int, stderr: str) -> str:
    assert returncode == 2, (returncode, stderr[-3000:])
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr[-3000:]
    assert lines[0].startswith("error: serving config: "), lines[0]
    return lines[0]


def test_the_good_file_parses(tmp_path):
    config = load_or_exit(write(GOOD, tmp_path, "good"))
    assert config.ensembles["pair"].weights == [2.0, 1.0] and config.batching.sizes == [1, 4, 8]
    assert config.cuda.cudnn_conv_algo_search == "HEURISTIC" and config.limits.max_image_pixels == 1000
    for (old, _), _message in BAD:
        assert old in GOOD, old  # every bad file really differs from the good one


@pytest.mark.parametrize(("change", "message"), BAD, ids=[new or f"no {old}" for (old, new), _ in BAD])
def test_each_bad_serving_yaml_is_one_line_and_exit_2(change, message, tmp_path, capsys):
    path = write(GOOD.replace(*change, 1), tmp_path, "bad")
    with pytest.raises(SystemExit) as stop:
        load_or_exit(path)
    line = one_line(stop.value.code, capsys.readouterr().err)
    assert message in line, line
    assert line.endswith(f"(in {path})") or f"{path} is not valid YAML" in line, line


def test_the_service_stops_on_those_lines_at_import(tmp_path, capsys):
    """`import service.service` (what `bentoml serve` imports) prints the same line as `load_or_exit`."""
    for i in (0, 20, 26, 31, 35, 40):  # a type, a range, an unknown key, weights, an unknown model, bad YAML
        path = write(GOOD.replace(*BAD[i][0], 1), tmp_path, f"bad{i}")
        with pytest.raises(SystemExit):
            load_or_exit(path)
        expected = capsys.readouterr().err.strip()
        result = start_up(path)
        assert one_line(result.returncode, result.stderr) == expected and BAD[i][1] in expected


def test_a_file_that_is_not_utf8_is_one_line(tmp_path, capsys):
    path = tmp_path / "latin1.yaml"
    path.write_bytes(GOOD.replace("default_model: a", "# caf\u00e9\ndefault_model: a").encode("latin-1"))
    with pytest.raises(SystemExit) as stop:
        load_or_exit(path)
    line = one_line(stop.value.code, capsys.readouterr().err)
    assert line == f"error: serving config: {path} is not UTF-8 text (byte 18 is 0xe9): save it as UTF-8"
    result = start_up(path)  # the service reads the file itself, to pack its text into a Bento
    assert one_line(result.returncode, result.stderr) == line


def test_merge_keys_may_override(tmp_path):
    """`<<: *anchor` then a key of the merged mapping is YAML's way to override, not a key given twice."""
    pair = "  pair: {members: [a, b], voting: weighted, weights: [2, 1]}"
    text = GOOD.replace(pair, pair.replace("pair: {", "pair: &pair {") + "\n  soft: {<<: *pair, voting: soft}")
    config = load_or_exit(write(text, tmp_path, "merge"))
    assert config.ensembles["soft"].voting == "soft" and config.ensembles["soft"].members == ["a", "b"]


@pytest.mark.slow
def test_bentoml_serve_stops_on_the_same_line(tmp_path):
    path = write(GOOD.replace("max_wait_ms: 5", "max_wait_ms: soon"), tmp_path, "serve")
    expected = one_line(*(lambda r: (r.returncode, r.stderr))(start_up(path)))
    bentoml = str(Path(sys.executable).parent / "bentoml")
    result = start_up(path, [bentoml, "serve", "--port", "0"])
    assert one_line(result.returncode, result.stderr) == expected


def test_connections_max_open_is_half_the_file_limit_or_must_leave_room_under_it(capsys):
    """Checked where the server runs (the limit is that machine's): one line and exit 2 for a cap that leaves a
    worker fewer than FILES_KEPT files besides its connections."""
    from service import connections

    limit = connections.file_limit()
    assert connections.max_open_or_exit(None) == limit // 2
    assert connections.max_open_or_exit(limit - connections.FILES_KEPT) == limit - connections.FILES_KEPT
    with pytest.raises(SystemExit) as stop:
        connections.max_open_or_exit(limit)
    line = one_line(stop.value.code, capsys.readouterr().err)
    assert f"connections.max_open is {limit}, but a worker may open {limit} files" in line, line
