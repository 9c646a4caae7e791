"""A batch bound where it lies (service/runtime.py, `Graph.run_at`): what a GPU preprocessing backend hands ONNX
Runtime, a buffer's address. Here the buffer is on the host ("cpu"), which ONNX Runtime binds the same way; the
answers must be the plain `session.run`'s, with any batch size and with fixed sizes (padding from the buffer)."""

from __future__ import annotations

import numpy as np
import pytest

from service.runtime import Graph, _Captured
from tests.tiny_onnx import tiny_graph


@pytest.fixture(scope="module")
def path(tmp_path_factory):
    return tiny_graph(tmp_path_factory.mktemp("graphs") / "a.onnx", 0)


def _plain(graph: Graph, pixels: np.ndarray) -> np.ndarray:
    return graph.any_size.session.run(["probabilities"], {"images": pixels})[0]


def test_a_bound_host_buffer_gets_session_runs_answer(path):
    graph = Graph(path, "cpu", 1)
    rng = np.random.default_rng(0)
    for n in (1, 3, 17):
        pixels = rng.integers(0, 256, (n, *graph.input_shape), dtype=np.uint8)
        out = graph.run_at(pixels.ctypes.data, n, "cpu")
        assert out["probabilities"].shape == (n, 10)
        np.testing.assert_allclose(out["probabilities"], _plain(graph, pixels), atol=1e-6, rtol=0)


def test_fixed_sizes_read_their_padding_from_the_buffer(path):
    graph = Graph(path, "cpu", 1, sizes=[1, 2, 4])
    rng = np.random.default_rng(1)
    for n in (1, 3, 4, 7, 9):
        # rows past n black, as a backend leaves them
        buffer = np.zeros((graph.run_size(n), *graph.input_shape), np.uint8)
        buffer[:n] = rng.integers(0, 256, (n, *graph.input_shape), dtype=np.uint8)
        out = graph.run_at(buffer.ctypes.data, n, "cpu")
        assert out["probabilities"].shape == (n, 10), n
        np.testing.assert_allclose(out["probabilities"], _plain(graph, buffer[:n]), atol=1e-6, rtol=0)
        np.testing.assert_allclose(out["probabilities"], graph.run(buffer[:n])["probabilities"], atol=1e-6, rtol=0)


def test_a_captured_size_says_it_takes_its_batch_in_its_own_buffer(path):
    graph = Graph(path, "cpu", 1)
    captured = _Captured(graph.any_size.session, 4, graph.input_shape, device="cpu")
    pixels = np.zeros((4, *graph.input_shape), np.uint8)
    with pytest.raises(NotImplementedError, match="own bound buffer"):
        captured.at(pixels.ctypes.data, pixels.shape, "cpu", 0)
