"""A batch bound where it lies (service/runtime.py, `Graph.run_at`): what the gpu preprocessing backend hands ONNX
Runtime, a buffer's address, once service/device_batch.py has gathered the requests' crops into it. Here the buffer
and the crops are on the host ("cpu"), which ONNX Runtime binds the same way; the answers must be the plain
`session.run`'s, with any batch size and with fixed sizes (padding from the buffer)."""

from __future__ import annotations

import ctypes

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


# service/device_batch.py: a batch gathered where the gpu backend's crops are ("cpu" OrtValues here, as ONNX Runtime
# makes them on a GPU), then read in place; the answers must be those of the same pixels stacked on the host
def _ortvalue(crop: np.ndarray):
    import onnxruntime as ort

    return ort.OrtValue.ortvalue_from_numpy(crop)


def test_a_batch_gathered_from_requests_crops_gets_the_stacked_batchs_answers(path):
    from service.device_batch import Crops, Memory, gather

    rng = np.random.default_rng(2)
    for sizes in (None, [1, 2, 4]):
        graph = Graph(path, "cpu", 1, sizes=sizes)
        memory = Memory("cpu")
        for counts in ((1,), (2, 1), (3, 2, 2), (1, 1, 1, 1, 1, 4)):  # padding to the next size; past the largest
            requests = [rng.integers(0, 256, (n, *graph.input_shape), dtype=np.uint8) for n in counts]
            parts = [
                # a request whose images all took the host path is one host array; the others mix kept crops with
                # host arrays (images the device left to Pillow)
                pixels if i % 2 else Crops(_ortvalue(c) if j % 3 != 1 else c for j, c in enumerate(pixels))
                for i, pixels in enumerate(requests)
            ]
            expected = graph.run(np.concatenate(requests))["probabilities"]
            got = gather(graph, parts, memory)["probabilities"]
            assert got.shape == expected.shape, counts
            np.testing.assert_allclose(got, expected, atol=1e-6, rtol=0)
            buffer = memory.buffers[graph.input_shape].numpy()
            images, rows = sum(counts), graph.run_size(sum(counts))
            assert np.array_equal(buffer[:images], np.concatenate(requests)), counts
            assert not buffer[images:rows].any(), counts  # the fixed size's padding is black, whatever was there


def test_the_buffer_is_kept_and_grows_for_a_larger_batch(path):
    from service.device_batch import Memory

    memory = Memory("cpu")
    shape = (32, 32, 3)
    first = memory.buffer(4, shape)
    assert memory.buffer(2, shape) == first and memory.buffer(4, shape) == first
    memory.buffer(9, shape)
    assert memory.buffers[shape].shape() == [9, *shape]


def test_a_crop_of_another_size_is_refused_before_it_is_copied(path):
    from service.device_batch import Crops, Memory, gather

    graph = Graph(path, "cpu", 1)
    memory = Memory("cpu")
    right = np.zeros(graph.input_shape, np.uint8)
    for wrong in (np.zeros((16, 16, 3), np.uint8), _ortvalue(np.zeros((33, 32, 3), np.uint8)),
                  _ortvalue(np.zeros(graph.input_shape, np.float32))):  # fmt: skip
        with pytest.raises(ValueError, match=r"in a batch of uint8 \(32, 32, 3\)"):
            gather(graph, [Crops([right, wrong])], memory)


def test_a_captured_graph_gets_the_crops_on_the_host(path, monkeypatch):
    """CUDA graphs read their own bound buffer: the gathered batch goes through `run` instead (here a CPU graph
    marked captured, whose `run_at` would fail the test)."""
    from service.device_batch import Crops, Memory, gather

    graph = Graph(path, "cpu", 1, sizes=[1, 2, 4])
    graph.captured = True
    monkeypatch.setattr(graph, "run_at", lambda *args: pytest.fail("a captured graph was run at an address"))
    pixels = np.random.default_rng(3).integers(0, 256, (3, *graph.input_shape), dtype=np.uint8)
    got = gather(graph, [pixels[:1], Crops([_ortvalue(pixels[1]), pixels[2]])], Memory("cpu"))
    np.testing.assert_allclose(got["probabilities"], graph.run(pixels)["probabilities"], atol=1e-6, rtol=0)


class _HostRuntime:
    """The CUDA runtime calls service/device_batch.py makes, done on host memory with the CUDA runtime's argument
    order and return codes (0: success), so that its GPU branch (which copy goes where, on which stream, what a
    failure says) runs here; the real library's behaviour is what tests/test_gpu_preprocessing.py checks on a GPU.
    The methods have the runtime's own names."""

    def __init__(self, fail: str = "") -> None:
        self.fail, self.calls = fail, []

    def _call(self, name: str, *args) -> int:
        self.calls.append((name, *args[-1:]))  # the name and the last argument (the stream, or the device)
        return 2 if name == self.fail else 0

    def cudaSetDevice(self, device: int) -> int:
        return self._call("cudaSetDevice", device)

    def cudaMemcpyAsync(self, to: int, source: int, size: int, kind: int, stream: int) -> int:
        assert kind == 4  # cudaMemcpyDefault
        ctypes.memmove(to, source, size)
        return self._call("cudaMemcpyAsync", stream)

    def cudaMemsetAsync(self, to: int, value: int, size: int, stream: int) -> int:
        ctypes.memset(to, value, size)
        return self._call("cudaMemsetAsync", stream)

    def cudaStreamSynchronize(self, stream: int) -> int:
        return self._call("cudaStreamSynchronize", stream)

    def cudaGetErrorString(self, status: int) -> bytes:
        return b"out of memory" if status == 2 else b"no error"


def test_the_gpu_branch_copies_each_crop_to_its_row_on_its_stream_and_waits_once(path):
    from service.device_batch import Crops, Memory, gather

    graph = Graph(path, "cpu", 1, sizes=[1, 2, 4])
    memory = Memory("cpu", device_id=3, stream=77)
    memory.cuda = _HostRuntime()  # the GPU branch, on host buffers
    pixels = np.random.default_rng(4).integers(0, 256, (3, *graph.input_shape), dtype=np.uint8)
    got = gather(graph, [pixels[:1], Crops([_ortvalue(pixels[1]), pixels[2]])], memory)["probabilities"]
    np.testing.assert_allclose(got, graph.run(pixels)["probabilities"], atol=1e-6, rtol=0)
    assert memory.cuda.calls == [
        ("cudaSetDevice", 3),
        ("cudaMemcpyAsync", 77),
        ("cudaMemcpyAsync", 77),
        ("cudaMemcpyAsync", 77),
        ("cudaMemsetAsync", 77),
        ("cudaStreamSynchronize", 77),
    ]
    buffer = memory.buffers[graph.input_shape].numpy()
    assert np.array_equal(buffer[:3], pixels) and not buffer[3].any()


def test_a_failed_copy_names_the_call_the_gpu_and_the_reason(path):
    from service.device_batch import Memory, gather

    graph = Graph(path, "cpu", 1)
    memory = Memory("cpu", device_id=1, stream=5)
    memory.cuda = _HostRuntime(fail="cudaMemcpyAsync")
    with pytest.raises(RuntimeError, match="cudaMemcpyAsync failed on GPU 1: out of memory"):
        gather(graph, [np.zeros((2, *graph.input_shape), np.uint8)], memory)
