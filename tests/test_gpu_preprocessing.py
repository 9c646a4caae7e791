"""The gpu preprocessing backend on a GPU (skipped without one: bench/gpu_check.sh runs this module on the lent GPU
machine, with `--noconftest`, as it has no training dependencies there). What tests/test_preprocessing.py checks on
the CPU variant, checked where it runs in production: nvImageCodec's GPU decoders and the resize graph on the CUDA
provider against Pillow (issue 28's bound: values within one level, at least 99.5% of them), the crops kept on the
GPU and gathered there into the model's input (equal to the same crops brought to the host), the decoding threads
calling the device at once, and the in-process app answering through it as through the host path."""

from __future__ import annotations

import asyncio
import importlib.util
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from core.devices import gpu_present
from service.config import Limits
from service.decode import decode
from tests.test_preprocessing import BICUBIC, ImageNet, _config, _cuts, _encoded, _photos
from tests.tiny_onnx import tiny_graph


def _cuda_provider() -> bool:
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


pytestmark = pytest.mark.skipif(
    not (gpu_present() and importlib.util.find_spec("nvidia.nvimgcodec") and _cuda_provider()),
    reason="needs an NVIDIA GPU, onnxruntime-gpu and nvImageCodec (bench/gpu_check.sh runs it on one)",
)


@pytest.fixture(scope="module")
def kept():
    from service.device_pixels import DevicePixels

    return DevicePixels(0, keep=True)


def _on_host(crop) -> np.ndarray:
    return crop if isinstance(crop, np.ndarray) else crop.numpy()


def test_the_gpu_is_warmed_with_a_crop_it_makes(kept):
    assert kept.warm(ImageNet) and kept.warm(BICUBIC)


def test_gpu_crops_are_within_one_level_of_pillows(kept):
    """Photo cuts of many sizes, both orientations, 4:2:0 and 4:4:4: what the GPU made is within one level of Pillow
    on at least 99.5% of the values; what it gave back to Pillow (a pitched buffer, say) is counted, not compared."""
    limits, equal, within, total, made_here = Limits(), 0, 0, 0, 0
    for photo in _photos():
        for cut in _cuts(photo):
            for preprocess, options in ((ImageNet, {"quality": 90}), (BICUBIC, {"quality": 75, "subsampling": 0})):
                data = _encoded(cut, **options)
                made = kept.pixels(data, (cut.shape[1], cut.shape[0]), preprocess)
                if made is None:
                    continue
                diff = np.abs(_on_host(made).astype(np.int16) - decode(data, 0, limits, preprocess))
                equal, within = equal + int((diff == 0).sum()), within + int((diff <= 1).sum())
                total, made_here = total + diff.size, made_here + 1
    assert made_here >= 32, f"the GPU made {made_here} of 40 crops"
    assert within / total >= 0.995, f"within one level: {within / total:.5f}, equal: {equal / total:.5f}"


def test_a_batch_gathered_on_the_gpu_is_the_batch_brought_to_the_host(kept, tmp_path):
    from service.device_batch import Crops, Memory, gather
    from service.runtime import Graph

    graph = Graph(tiny_graph(tmp_path / "a.onnx", 0, crop_size=224, resize_size=256), "cuda", 1, sizes=[1, 2, 4])
    memory = Memory.of(kept)
    assert memory.where == "cuda" and memory.stream not in (0, kept.stream)
    limits, photos = Limits(), _photos()
    jpegs = [_encoded(cut) for cut in _cuts(photos[0])[:3]]
    crops = Crops(decode(data, i, limits, ImageNet, kept) for i, data in enumerate(jpegs))
    assert any(not isinstance(crop, np.ndarray) for crop in crops)  # OrtValues on the GPU
    png = decode(_encoded(photos[1][:300, :400], "PNG"), 0, limits, ImageNet)[None]  # a request the host made
    memory.buffer(8, graph.input_shape)
    memory.buffers[graph.input_shape].update_inplace(np.full((8, *graph.input_shape), 255, np.uint8))  # dirty
    on_host = np.concatenate([np.stack([_on_host(c) for c in crops]), png])
    got = gather(graph, [crops, png], memory)["probabilities"]  # 4 images: size 4, no padding
    np.testing.assert_allclose(got, graph.run(on_host)["probabilities"], atol=1e-6, rtol=0)
    assert np.array_equal(memory.buffers[graph.input_shape].numpy()[:4], on_host)
    got = gather(graph, [crops], memory)["probabilities"]  # 3 images: padded to 4 with black
    assert not memory.buffers[graph.input_shape].numpy()[3].any()
    np.testing.assert_allclose(got, graph.run(on_host[:3])["probabilities"], atol=1e-6, rtol=0)


def test_the_decoding_threads_call_the_gpu_at_once(kept):
    limits = Limits()
    cuts = [_encoded(cut) for photo in _photos()[:2] for cut in _cuts(photo)[:3]]
    serial = [_on_host(decode(data, 0, limits, ImageNet, kept)) for data in cuts]
    with ThreadPoolExecutor(8) as threads:
        got = list(threads.map(lambda data: _on_host(decode(data, 0, limits, ImageNet, kept)), cuts * 8))
    assert all(np.array_equal(g, serial[i % len(cuts)]) for i, g in enumerate(got))


def test_the_routes_answer_through_the_gpu_as_through_the_host(kept, tmp_path):
    """The in-process app, graphs on the CUDA provider, the gpu backend against the host backend: the same labels
    and probabilities within what one level of a few pixels can move a mean colour's softmax."""
    from starlette.testclient import TestClient

    from service import preprocessing
    from service.engine import Engine
    from service.http import app as http_app
    from service.runtime import Graph

    config = _config("device: cuda\nensembles:\n  default: {members: [a]}\n")
    path = tiny_graph(tmp_path / "a.onnx", 0, crop_size=224, resize_size=256)
    graphs = {"a": ("a:v1", Graph(path, "cuda", 1, sizes=[1, 2, 4]))}
    photos = _photos()
    jpegs = [_encoded(photos[0][:375, :500]), _encoded(photos[2][:300, :400], quality=70)]
    files = [("images", (f"{i}.jpg", data, "image/jpeg")) for i, data in enumerate(jpegs)]
    files.append(("images", ("c.png", _encoded(photos[1][:200, :300], "PNG"), "image/png")))
    answers = []
    for backend in (preprocessing.Gpu(kept), preprocessing.Host()):
        app = http_app.build(config)
        with TestClient(app) as client:
            app.state.engine = Engine(config, graphs, backend)
            response = client.post("/classify?top_k=3", files=files)
            assert response.status_code == 200, response.text
            answers.append(response.json())
    for gpu, host in zip(*answers):
        assert gpu["label"] == host["label"], (gpu, host)
        assert abs(gpu["probability"] - host["probability"]) <= 1e-3, (gpu, host)


def test_the_engine_makes_a_batch_from_concurrent_requests_on_the_gpu(kept, tmp_path):
    """Requests decoded at once share one session call whose input never left the GPU: each answer is its own."""
    from service import preprocessing
    from service.engine import Engine
    from service.runtime import Graph

    config = _config("device: cuda\n")
    path = tiny_graph(tmp_path / "a.onnx", 0, crop_size=224, resize_size=256)
    graphs = {"a": ("a:v1", Graph(path, "cuda", 1, sizes=[1, 2, 4, 8]))}
    jpegs = [_encoded(cut) for cut in _cuts(_photos()[3])[:4]]

    async def answers(backend):
        engine = Engine(config, graphs, backend)
        return await asyncio.gather(*(engine.classify([data], "a", 1) for data in jpegs))

    gpu, host = asyncio.run(answers(preprocessing.Gpu(kept))), asyncio.run(answers(preprocessing.Host()))
    assert [a[0]["label"] for a in gpu] == [a[0]["label"] for a in host]
    assert max(abs(a[0]["probability"] - b[0]["probability"]) for a, b in zip(gpu, host)) <= 1e-3
