"""Fixed batch sizes (service/runtime.py): padding never changes an answer and never reaches one.

Real ONNX Runtime sessions on real exported graphs (random-weight ResNet-18 at 32 px, and an ensemble
graph fused from two of them); on the CPU provider, where the padded path is the same code as on a GPU.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from export.ensemble import fuse
from export.graph import export_onnx
from service import config as serving_config
from service.runtime import Graph, _Captured, batch_sizes
from training import checkpoint as ckpt
from training.checkpoint import checkpoint_dict
from training.config import load_config
from training.models import build_model


def _random_graph(folder: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    config = load_config(None, {"model.arch": "resnet18", "preprocess.crop_size": 32, "preprocess.resize_size": 32})
    model, preprocess, _ = build_model(config["model"], 10, config["preprocess"])
    source = folder / f"m{seed}.pt"
    ckpt.save(checkpoint_dict(model, None, [str(i) for i in range(10)], preprocess, config, {}), source)
    out = folder / f"m{seed}.onnx"
    export_onnx(ckpt.load(source), source, out)
    return out


@pytest.fixture(scope="module")
def graphs(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("graphs")
    a, b = _random_graph(folder, 0), _random_graph(folder, 1)
    pair = folder / "pair.onnx"
    onnx.save(fuse([a, b]), pair)
    return {"single": a, "pair": pair}


@pytest.mark.slow
def test_run_size_pads_to_the_next_size_and_chunks_past_the_largest(graphs):
    graph = Graph(graphs["single"], "cpu", sizes=[8, 1, 4])
    assert graph.sizes == [1, 4, 8]
    expected = {1: 1, 2: 4, 3: 4, 4: 4, 5: 8, 8: 8, 9: 9, 11: 12, 16: 16, 17: 17, 21: 24}
    assert {n: graph.run_size(n) for n in expected} == expected
    assert Graph(graphs["single"], "cpu").run_size(11) == 11  # no sizes: every batch runs as it comes


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["single", "pair"])
def test_padded_batches_give_each_image_the_answer_it_gets_alone(graphs, kind):
    """11 images run as 8 + (3 padded to 4); the same images one at a time and through an unpadded session
    agree to 1e-5 per output, including an ensemble's member_probabilities, whose images are on axis 1."""
    pixels = np.random.default_rng(0).integers(0, 256, (11, 32, 32, 3), dtype=np.uint8)
    padded = Graph(graphs[kind], "cpu", sizes=[1, 4, 8])
    plain = Graph(graphs[kind], "cpu")
    batched = padded.run(pixels)
    reference = plain.run(pixels)
    alone = [padded.run(pixels[i : i + 1]) for i in range(len(pixels))]
    assert set(batched) == set(reference) == set(plain.outputs)
    for name, value in batched.items():
        axis = 1 if name == "member_probabilities" else 0
        assert value.shape == reference[name].shape and value.shape[axis] == 11, name
        np.testing.assert_allclose(value, reference[name], atol=1e-5, err_msg=name)
        one_by_one = np.concatenate([a[name] for a in alone], axis=axis)
        np.testing.assert_allclose(value, one_by_one, atol=1e-5, err_msg=name)
    # the padding's black images are not in any answer: a black image's row would differ from these
    black = plain.run(np.zeros((1, 32, 32, 3), np.uint8))["probabilities"][0]
    assert not np.any(np.all(np.isclose(batched["probabilities"], black, atol=1e-7), axis=1))


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["single", "pair"])
def test_bound_buffers_of_a_captured_size_take_each_new_batch(graphs, kind):
    """The CUDA-graph call binds its input and output buffers once and copies each batch into them; here
    the buffers are on the CPU (CUDA graphs themselves need a GPU), so the binding logic runs for real."""
    plain = Graph(graphs[kind], "cpu")
    call = _Captured(plain.any_size.session, 4, plain.input_shape, device="cpu")
    rng = np.random.default_rng(1)
    for _ in range(3):  # new pixels each time through the same buffers
        pixels = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
        out, reference = call(pixels), plain.run(pixels)
        assert set(out) == set(reference)
        for name in out:
            np.testing.assert_allclose(out[name], reference[name], atol=1e-6, err_msg=name)


@pytest.mark.slow
def test_warm_runs_every_fixed_size(graphs):
    assert sorted(Graph(graphs["single"], "cpu", sizes=[1, 2, 16]).warm()) == [1, 2, 16]
    assert Graph(graphs["single"], "cpu").warm() == {}


def test_batch_sizes_from_serving_config():
    base = {"models": ["a"]}
    auto = serving_config.parse(base)
    assert batch_sizes(auto, on_gpu=True) == [1, 2, 4, 8, 16, 32, 64]
    assert batch_sizes(auto, on_gpu=False) is None  # the CPU provider runs any size at no cost
    odd = serving_config.parse({**base, "batching": {"max_batch_size": 48}})
    assert batch_sizes(odd, on_gpu=True) == [1, 2, 4, 8, 16, 32, 48]
    listed = serving_config.parse({**base, "batching": {"sizes": [1, 8, 64]}})
    assert batch_sizes(listed, on_gpu=False) == [1, 8, 64]
    assert batch_sizes(serving_config.parse({**base, "batching": {"sizes": "none"}}), True) is None
    cuda = serving_config.parse({**base, "cuda": {"cudnn_conv_algo_search": "HEURISTIC", "cuda_graph": True}})
    assert cuda.cuda.cudnn_conv_algo_search == "HEURISTIC" and cuda.cuda.cuda_graph and not cuda.cuda.prefer_nhwc
    assert serving_config.parse({**base, "decoding": {"processes": 3}}).decoding.processes == 3
    for raw, message in [
        ({"batching": {"sizes": [1, 8]}}, "must be distinct, ascending and end at batching.max_batch_size \\(64\\)"),
        ({"batching": {"sizes": [64, 1, 8]}}, "must be distinct, ascending"),
        ({"batching": {"sizes": [1, 8, 64, 128]}}, "must be distinct, ascending and end at batching.max_batch_size"),
        ({"batching": {"sizes": [0, 64]}}, "whole numbers of at least 1"),
        ({"batching": {"sizes": "fixed"}}, "auto, none or a list"),
        ({"batching": {"sizes": [64, 64]}}, "must be distinct"),
        ({"cuda": {"cudnn_conv_algo_search": "FAST"}}, "must be EXHAUSTIVE, HEURISTIC or DEFAULT, got .FAST."),
        ({"cuda": {"graphs": True}}, "unknown serving.yaml key 'cuda.graphs': did you mean cuda.cuda_graph\\?"),
        ({"cuda": {"prefer_nhwc": "yes"}}, "cuda.prefer_nhwc must be true or false, got .yes."),
        ({"decoding": {"processes": -1}}, "decoding.processes must be a whole number"),
        (
            {"decoding": {"threads": 2}},
            "unknown serving.yaml key 'decoding.threads'; valid keys in decoding: processes",
        ),
    ]:
        with pytest.raises(serving_config.ConfigError, match=message):
            serving_config.parse({**base, **raw})
