"""serving.yaml `preprocessing` (service/config.py) and the backend it chooses (service/preprocessing.py): auto runs the
host backend where the GPU one cannot run; gpu where it cannot is one line and exit status 2; the host backend's
batch is the pixels each image decodes to, stacked, as before the boundary."""

from __future__ import annotations

import asyncio
import io

import numpy as np
import pytest
from PIL import Image

from core.devices import gpu_present
from service import preprocessing
from service.budget import Budget
from service.config import ConfigError, Limits, loads
from service.decode import decode

PREPROCESS = {"resize_size": 40, "crop_size": 32, "interpolation": "bilinear"}


def _config(text: str):
    return loads(f"models: [a]\n{text}", "test.yaml")


def test_the_key_defaults_to_auto_and_takes_host_and_gpu():
    assert _config("").preprocessing == "auto"
    assert _config("preprocessing: host\n").preprocessing == "host"
    assert _config("device: cuda\npreprocessing: gpu\n").preprocessing == "gpu"


@pytest.mark.parametrize(
    ("text", "message"),
    [("preprocessing: cpu\n", "preprocessing must be auto, host or gpu, got 'cpu'"),
     ("device: cpu\npreprocessing: gpu\n", "preprocessing: gpu makes the pixels on the GPU, but device is cpu")],
)  # fmt: skip
def test_a_bad_value_is_one_line(text, message):
    with pytest.raises(ConfigError) as refused:
        _config(text)
    assert message in str(refused.value) and "\n" not in str(refused.value), str(refused.value)


def test_auto_and_host_run_the_host_backend():
    for text in ("", "preprocessing: host\n", "device: cuda\n"):
        assert preprocessing.choose(_config(text)) == "host"
    assert isinstance(preprocessing.backend("host"), preprocessing.Host)


def test_gpu_without_a_gpu_stops_start_up_in_one_line(capsys):
    if gpu_present():
        pytest.skip("this machine has a GPU")
    with pytest.raises(SystemExit) as stop:
        preprocessing.choose_or_exit(_config("preprocessing: gpu\n"))
    assert stop.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: preprocessing: gpu, but this machine has no GPU"), lines
    assert "the GPU backend needs a GPU machine" in lines[0] and "preprocessing: auto or host" in lines[0], lines


def test_gpu_without_the_decoder_or_the_backend_is_refused(monkeypatch):
    monkeypatch.setattr(preprocessing, "gpu_present", lambda: True)
    monkeypatch.setattr(preprocessing, "DECODER_MODULE", "nvidia.no_such_decoder")
    assert not preprocessing.decoder_installed()
    with pytest.raises(preprocessing.PreprocessingError, match="pip install nvidia-nvimgcodec-cu13"):
        preprocessing.choose(_config("preprocessing: gpu\n"))
    monkeypatch.setattr(preprocessing, "decoder_installed", lambda: True)
    with pytest.raises(preprocessing.PreprocessingError, match="no GPU backend yet"):
        preprocessing.choose(_config("preprocessing: gpu\n"))


def _png(size: tuple[int, int], seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "PNG")
    return out.getvalue()


def test_the_host_backend_stacks_each_images_pixels():
    images = [_png((50, 40), 0), _png((33, 77), 1), _png((32, 32), 2)]
    limits = Limits()

    async def batch(upload: list[bytes]) -> np.ndarray:
        return await preprocessing.Host().batch(upload, PREPROCESS, limits, Budget(limits.decode_budget_bytes, 1000))

    got = asyncio.run(batch(images))
    expected = np.stack([decode(data, i, limits, PREPROCESS) for i, data in enumerate(images)])
    assert got.dtype == np.uint8 and got.shape == (3, 32, 32, 3) and np.array_equal(got, expected)
    assert np.array_equal(asyncio.run(batch(images[:1])), expected[:1])
