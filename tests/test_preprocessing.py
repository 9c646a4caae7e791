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
    assert "the GPU backend needs a GPU machine" in lines[0] and "use preprocessing auto or host" in lines[0], lines


def test_gpu_needs_the_decoder_and_sessions_on_the_gpu(monkeypatch):
    monkeypatch.setattr(preprocessing, "gpu_present", lambda: True)
    monkeypatch.setattr(preprocessing, "DECODER_MODULE", "nvidia.no_such_decoder")
    assert not preprocessing.decoder_installed()
    with pytest.raises(preprocessing.PreprocessingError, match="pip install nvidia-nvimgcodec-cu13 nvidia-nvjpeg"):
        preprocessing.choose(_config("preprocessing: gpu\n"))
    monkeypatch.setattr(preprocessing, "decoder_installed", lambda: True)
    monkeypatch.setattr(preprocessing, "uses_gpu", lambda device: device == "cuda")
    with pytest.raises(preprocessing.PreprocessingError, match="the sessions run on the CPU"):
        preprocessing.choose(_config("preprocessing: gpu\n"))
    assert preprocessing.choose(_config("device: cuda\npreprocessing: gpu\n")) == "gpu"
    assert preprocessing.choose(_config("device: cuda\n")) == "host"  # auto: host until measured on a GPU


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


# The gpu backend's own code on the CPU: nvImageCodec's CPU decoder and the resize graph on ONNX Runtime's CPU
# provider, bound as the GPU's buffers are. The host path (Pillow) is the reference the GPU must equal.
ImageNet = {"resize_size": 256, "crop_size": 224, "interpolation": "bilinear"}
BICUBIC = {"resize_size": 232, "crop_size": 224, "interpolation": "bicubic"}


@pytest.fixture(scope="module")
def device():
    pytest.importorskip("nvidia.nvimgcodec")
    from service.device_pixels import DevicePixels

    return DevicePixels(None)


@pytest.fixture(scope="module")
def kept():
    """The device as the service makes it: its crops kept where they were made, for a batch gathered there."""
    pytest.importorskip("nvidia.nvimgcodec")
    from service.device_pixels import DevicePixels

    return DevicePixels(None, keep=True)


def _encoded(pixels: np.ndarray, fmt: str = "JPEG", mode: str = "RGB", **options) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(out, fmt, **options)
    return out.getvalue()


def _photos() -> list[np.ndarray]:
    data = pytest.importorskip("skimage.data")
    return [data.astronaut(), data.chelsea(), data.coffee(), data.rocket()]


def _cuts(photo: np.ndarray) -> list[np.ndarray]:
    """A photo-sized cut each way, a tall and a wide one, and an odd small one (upscaled)."""
    return [np.ascontiguousarray(c) for c in (photo[:375, :500], photo[:400, :300], photo[:, :90], photo[:97, :],
                                              photo[:151, :131])]  # fmt: skip


def test_the_device_path_on_the_cpu_is_the_host_paths_pixels(device):
    limits = Limits()
    taken = 0
    for photo in _photos():
        for cut in _cuts(photo):
            for preprocess, options in ((ImageNet, {"quality": 90}), (BICUBIC, {"quality": 75, "subsampling": 0})):
                data = _encoded(cut, **options)
                with Image.open(io.BytesIO(data)) as image:
                    assert device.takes(image, preprocess), (cut.shape, preprocess)
                got = device.pixels(data, (cut.shape[1], cut.shape[0]), preprocess)
                expected = decode(data, 0, limits, preprocess)
                assert got is not None and got.dtype == np.uint8 and got.shape == expected.shape
                assert np.array_equal(got, expected), (cut.shape, preprocess, int((got != expected).sum()))
                assert np.array_equal(decode(data, 0, limits, preprocess, device), expected)
                taken += 1
    assert taken == 40


def test_what_the_device_leaves_to_the_host(device):
    photo = _photos()[0][:375, :500]
    turned = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees: Pillow's exif_transpose turns it
    Image.fromarray(photo).save(turned, "JPEG", exif=exif)
    plain_exif = io.BytesIO()
    exif[0x0112] = 1
    Image.fromarray(photo).save(plain_exif, "JPEG", exif=exif)
    left = {
        "PNG": _encoded(photo, "PNG"), "GIF": _encoded(photo, "GIF", "P"), "WebP": _encoded(photo, "WEBP"),
        "grayscale JPEG": _encoded(photo, mode="L"), "CMYK JPEG": _encoded(photo, mode="CMYK"),
        "progressive JPEG": _encoded(photo, progressive=True), "rotated JPEG": turned.getvalue(),
    }  # fmt: skip
    for name, data in left.items():
        with Image.open(io.BytesIO(data)) as image:
            assert not device.takes(image, ImageNet), name
    with Image.open(io.BytesIO(_encoded(photo))) as image:
        assert not device.takes(image, PREPROCESS)  # the host decodes it in JPEG's draft mode, at an eighth
        assert device.takes(image, ImageNet)
    with Image.open(plain_exif) as image:
        assert device.takes(image, ImageNet)  # EXIF, but upright


def test_each_sizes_resize_weights_are_made_once_and_the_oldest_go_past_the_bound(monkeypatch):
    """The weights stay where the resize runs, one set an image size (made and sent once, not with every image), and
    the least recently used go once they hold more than the bound; pixels stay the host path's throughout."""
    pytest.importorskip("nvidia.nvimgcodec")
    from service.device_pixels import DevicePixels

    device, limits = DevicePixels(None), Limits()
    photo = _photos()[0]
    sizes = [(500, 375), (400, 300), (300, 400)]
    jpegs = {size: _encoded(np.ascontiguousarray(photo[: size[1], : size[0]])) for size in sizes}
    for size in sizes[:2]:
        assert np.array_equal(device.pixels(jpegs[size], size, ImageNet), decode(jpegs[size], 0, limits, ImageNet))
    first = device.weights[((500, 375), 256, 224, "bilinear")]
    device.pixels(jpegs[(500, 375)], (500, 375), ImageNet)
    assert len(device.weights) == 2 and device.weights[((500, 375), 256, 224, "bilinear")] is first
    assert first.nbytes == 224 * 375 * 8 + 500 * 224 * 8  # float64 rows [224, 375] and columns [500, 224]
    device.weights_bytes = first.nbytes + 1  # room for one set: the newest stays
    assert np.array_equal(device.pixels(jpegs[(300, 400)], (300, 400), ImageNet),
                          decode(jpegs[(300, 400)], 0, limits, ImageNet))  # fmt: skip
    assert [key[0] for key in device.weights] == [(300, 400)]


def test_the_device_is_warmed_once_for_each_served_geometry(kept, tmp_path, monkeypatch):
    """Before /readyz the worker makes one small photo's crop on the device for each geometry its models have (their
    ensemble members share one), so the decoder's and the resize's first calls are not a request's."""
    from service.engine import Engine
    from service.runtime import Graph
    from tests.tiny_onnx import tiny_graph

    assert kept.warm(ImageNet) and ((341, 256), 256, 224, "bilinear") in kept.weights
    assert kept.warm(PREPROCESS) and ((53, 40), 40, 32, "bilinear") in kept.weights
    config = loads("models: [a, b, c]\n", "test.yaml")
    graphs = {name: (f"{name}:v1", Graph(tiny_graph(tmp_path / f"{name}.onnx", i, **geometry), "cpu", 1))
              for i, (name, geometry) in enumerate([("a", {"crop_size": 224, "resize_size": 256}),
                                                    ("b", {"crop_size": 224, "resize_size": 256}),
                                                    ("c", {"crop_size": 32, "resize_size": 40})])}  # fmt: skip
    warmed = []
    monkeypatch.setattr(kept, "warm", lambda preprocess: warmed.append(preprocess["crop_size"]) or True)
    Engine(config, graphs, preprocessing.Gpu(kept)).warm_preprocessing()
    assert sorted(warmed) == [32, 224]
    Engine(config, graphs, preprocessing.Host()).warm_preprocessing()  # nothing to make: no error
    assert sorted(warmed) == [32, 224]


def test_an_image_over_the_devices_pixels_takes_the_host_path(device, monkeypatch):
    """The resize holds the image in float64 on the device: one larger than DEVICE_PIXELS (a panorama whose shorter
    side is under draft mode's) is left to Pillow, whose decoding budget bounds it."""
    from service import device_pixels

    panorama = np.ascontiguousarray(np.tile(_photos()[0][:300], (1, 6, 1)))  # 3072 x 300
    with Image.open(io.BytesIO(_encoded(panorama))) as image:
        assert device.takes(image, ImageNet)
        monkeypatch.setattr(device_pixels, "DEVICE_PIXELS", 3072 * 300 - 1)
        assert not device.takes(image, ImageNet)


def test_a_device_failure_is_pillows_image_and_a_line_a_minute(monkeypatch, caplog):
    """A GPU out of memory (or any fault of the decoder or the resize) in the middle of an image: the host path makes
    it, the answer is the same, and the log gets the first failure at once and the rest counted a minute later."""
    pytest.importorskip("nvidia.nvimgcodec")
    from service import device_pixels
    from service.device_pixels import DevicePixels

    device, limits = DevicePixels(None, keep=True), Limits()
    data = _encoded(_photos()[2][:375, :500])

    def out_of_memory(*args, **kwargs):
        raise RuntimeError("Error in execution: CUDA failure 2: out of memory\nmore detail")

    for session in device.sessions.values():
        monkeypatch.setattr(session, "run_with_iobinding", out_of_memory)
    now = [0.0]
    monkeypatch.setattr(device_pixels.time, "monotonic", lambda: now[0])
    with caplog.at_level("WARNING", logger="service"):
        for now[0] in (100.0, 130.0, 161.0):  # two failures each time: the first logged, then 4 counted a minute on
            assert device.pixels(data, (500, 375), ImageNet) is None
            assert np.array_equal(decode(data, 0, limits, ImageNet, device), decode(data, 0, limits, ImageNet))
    lines = [r.getMessage() for r in caplog.records if "gpu preprocessing failed" in r.getMessage()]
    reason = "(RuntimeError: Error in execution: CUDA failure 2: out of memory); Pillow decoded them instead"
    assert lines == [f"gpu preprocessing failed on {n} image(s) {reason}" for n in (1, 4)], lines


def test_the_gpu_backend_batches_as_the_host_backend_and_refuses_as_it_does(kept):
    """A request of every kind of image: the gpu backend's crops (the JPEGs' kept where the device made them) are the
    host backend's pixels; a JPEG cut short is one the device's decoder gives up on, and Pillow's refusal of it (400)
    is the answer either way."""
    import onnxruntime as ort

    from service.device_batch import Crops
    from service.errors import InputError

    limits = Limits()
    photo = _photos()[1]
    images = [_encoded(photo[:375, :500]), _encoded(photo, "PNG"), _encoded(photo[:300, :200], mode="L"),
              _encoded(photo[:200, :451], quality=60), _encoded(photo[:90, :120], "GIF", "P")]  # fmt: skip

    def batch(backend, upload):
        return asyncio.run(backend.batch(upload, ImageNet, limits, Budget(limits.decode_budget_bytes, 1000)))

    gpu = preprocessing.Gpu(kept)
    assert gpu.name == "gpu"
    crops = batch(gpu, images)
    assert isinstance(crops, Crops)
    assert [type(crop) for crop in crops] == [ort.OrtValue, np.ndarray, np.ndarray, ort.OrtValue, np.ndarray]
    on_host = np.stack([crop if isinstance(crop, np.ndarray) else crop.numpy() for crop in crops])
    assert np.array_equal(on_host, batch(preprocessing.Host(), images))
    assert isinstance(batch(gpu, images[1:3]), np.ndarray)  # nothing the device took: the host backend's batch
    cut = images[0][: len(images[0]) // 2]
    with Image.open(io.BytesIO(cut)) as image:
        assert kept.takes(image, ImageNet)  # its header is whole
    assert kept.pixels(cut, (500, 375), ImageNet) is None
    refusals = []
    for backend in (gpu, preprocessing.Host()):
        with pytest.raises(InputError) as refused:
            batch(backend, [images[1], cut])
        refusals.append((refused.value.status, str(refused.value)))
    assert refusals[0] == refusals[1] and refusals[0][0] == 400 and "image 1 is truncated" in refusals[0][1], refusals


def test_the_device_is_called_from_many_threads_at_once(device):
    """The worker's decoding threads call the device together: without its lock, nvImageCodec's decoder called from
    8 threads at once crashed the process ("pure virtual method called")."""
    from concurrent.futures import ThreadPoolExecutor

    limits = Limits()
    cuts = [_encoded(cut) for photo in _photos()[:2] for cut in _cuts(photo)[:3]]
    expected = [decode(data, 0, limits, ImageNet) for data in cuts]
    with ThreadPoolExecutor(8) as threads:
        got = list(threads.map(lambda data: decode(data, 0, limits, ImageNet, device), cuts * 8))
    assert all(np.array_equal(g, expected[i % len(cuts)]) for i, g in enumerate(got))


def test_images_brought_while_one_decodes_are_decoded_in_one_call():
    """One thread's image decodes alone; the seven that arrive meanwhile wait, and go to the decoder together in the
    next call: each thread still gets its own image's pixels, Pillow's."""
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    pytest.importorskip("nvidia.nvimgcodec")
    from service.device_pixels import DevicePixels

    device, limits = DevicePixels(None), Limits()
    cuts = [_encoded(cut) for photo in _photos()[:2] for cut in _cuts(photo)[:4]]
    calls, first_called, release = [], threading.Event(), threading.Event()

    class Held:
        """The decoder, its first call held until the test lets it go."""

        def __init__(self, decoder) -> None:
            self.decoder = decoder

        def decode(self, batch, cuda_stream=0):
            calls.append(len(batch))
            if len(calls) == 1:
                first_called.set()
                assert release.wait(30), "the first decode was never let go"
            return self.decoder.decode(batch, cuda_stream=cuda_stream)

    device.decoder = Held(device.decoder)

    def made(data: bytes) -> np.ndarray:
        return decode(data, 0, limits, ImageNet, device)

    with ThreadPoolExecutor(8) as threads:
        first = threads.submit(made, cuts[0])
        assert first_called.wait(30)
        rest = [threads.submit(made, data) for data in cuts[1:]]
        deadline = time.monotonic() + 30
        while len(device.waiting) < 7 and time.monotonic() < deadline:  # the seven wait behind the first
            time.sleep(0.005)
        release.set()
        got = [first.result(), *(r.result() for r in rest)]
    assert calls == [1, 7], calls
    assert all(np.array_equal(g, decode(data, 0, limits, ImageNet)) for g, data in zip(got, cuts))


def test_the_routes_answer_the_same_through_the_gpu_backend(kept, tmp_path, monkeypatch):
    """The in-process app with the engine on the gpu backend (its CPU variant, crops kept and gathered where they were
    made) against the same app on the host backend, a 224-px graph with fixed batch sizes: the same JSON for JPEG
    photos (multipart and as the whole body), a PNG, a grayscale JPEG, and the same 400 for a JPEG cut short."""
    from starlette.testclient import TestClient

    from service import device_batch
    from service.engine import Engine
    from service.http import app as http_app
    from service.runtime import Graph
    from tests.tiny_onnx import tiny_graph

    config = _config("ensembles:\n  default: {members: [a]}\n")
    path = tiny_graph(tmp_path / "a.onnx", 0, crop_size=224, resize_size=256)
    graphs = {"a": ("a:v1", Graph(path, "cpu", 1, sizes=[1, 2, 4]))}  # 3 images run as 4: padding in the buffer
    photos = _photos()
    jpegs = [_encoded(photos[0][:375, :500]), _encoded(photos[2][:300, :400], quality=70)]
    others = [_encoded(photos[1][:200, :300], "PNG"), _encoded(photos[3][:250, :250], mode="L")]
    made, pixels = [], kept.pixels
    monkeypatch.setattr(kept, "pixels", lambda *args: made.append(args[1]) or pixels(*args))
    gpu, gathered, gather = preprocessing.Gpu(kept), [], device_batch.gather
    monkeypatch.setattr(device_batch, "gather", lambda graph, parts, memory: gathered.append(
        [len(part) for part in parts]) or gather(graph, parts, memory))  # fmt: skip
    answers = []
    for backend in (gpu, preprocessing.Host()):
        app = http_app.build(config)
        with TestClient(app) as client:
            app.state.engine = Engine(config, graphs, backend)
            files = [("images", (f"{i}.jpg", data, "image/jpeg")) for i, data in enumerate(jpegs + others)]
            got = [
                client.post("/classify", files=files),
                client.post("/classify?top_k=3", content=jpegs[0], headers={"content-type": "image/jpeg"}),
                client.post("/ensemble", files=files[:2]),
                client.post("/classify", files=[files[2], ("images", ("cut.jpg", jpegs[1][:3000], "image/jpeg"))]),
            ]
            answers.append([(r.status_code, r.json()) for r in got])
    assert [status for status, _ in answers[0]] == [200, 200, 200, 400], answers[0]
    assert answers[0] == answers[1]
    # the JPEGs of the first three requests, and the cut one, which the device gave up on and Pillow refused
    assert sorted(made) == [(400, 300)] * 3 + [(500, 375)] * 3, made  # in whatever order the threads took them
    assert gathered == [[4], [1], [2]], gathered  # each request's crops read where they were made


def test_files_are_classified_through_the_device_as_through_the_host(device, tmp_path, monkeypatch):
    """`service.predict` with the gpu backend (its CPU variant): the rows of a folder of JPEG photos, a PNG, a
    grayscale JPEG and a JPEG cut short are the host path's, in threads and in this thread, and the device made the
    photos' pixels."""
    from service.models import Model
    from service.predict import classify
    from tests.tiny_onnx import tiny_graph

    photos = _photos()
    files = {"a.jpg": _encoded(photos[0][:375, :500]), "b.jpg": _encoded(photos[2][:300, :400], quality=70),
             "c.png": _encoded(photos[1][:200, :300], "PNG"), "d.jpg": _encoded(photos[3][:250, :250], mode="L"),
             "e.jpg": _encoded(photos[1][:375, :500])[:3000]}  # fmt: skip
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    paths = sorted(tmp_path.glob("*.*"))
    model = Model.load(str(tiny_graph(tmp_path / "m.onnx", 0, crop_size=224, resize_size=256)), device="cpu")
    made, pixels = [], device.pixels
    monkeypatch.setattr(device, "pixels", lambda *args: made.append(args[1]) or pixels(*args))

    def rows(workers: int, on: object) -> list[dict]:
        return [row for part in classify(model, paths, 3, 2, workers, device=on) for row in part]

    host = rows(0, None)
    assert [row["error"] is not None for row in host] == [False, False, False, False, True], host
    assert "e.jpg is truncated" in host[-1]["error"]
    assert rows(2, device) == host and rows(0, device) == host
    assert made == [(500, 375), (400, 300), (451, 300)] * 2  # the photos and the cut one, whose header is whole


def test_predict_with_gpu_preprocessing_where_it_cannot_run_is_one_line(tmp_path, capsys):
    from service.predict import main
    from tests.tiny_onnx import tiny_graph

    if gpu_present():
        pytest.skip("this machine has a GPU: tests/test_preprocessing.py's device checks run in bench/gpu_check.sh")
    image = tmp_path / "a.png"
    Image.new("RGB", (32, 32)).save(image)
    graph = tiny_graph(tmp_path / "m.onnx")
    assert main([str(graph), str(image), "--out", str(tmp_path / "o.csv"), "--preprocessing", "gpu"]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines == ["error: preprocessing: gpu, but this machine has no GPU: the GPU backend needs a GPU machine; "
                     "use preprocessing auto or host"], lines  # fmt: skip
    assert not (tmp_path / "o.csv").exists()
    assert main([str(graph), str(image), "--out", str(tmp_path / "o.csv"), "--preprocessing", "host"]) == 0


def test_on_ray_each_gpus_actor_decodes_its_own_files_with_gpu_preprocessing():
    """service/bulk.py's layout (no Ray needed): with the gpu backend, no decoding tasks; each GPU's actor gets its
    share of the CPUs for the images its GPU does not take."""
    from service.bulk import Layout, layout

    assert layout(cpus=64, gpus=4) == Layout(4, 0, 1, True)  # host preprocessing: the CPUs decode in tasks
    assert layout(cpus=64, gpus=4, on_device=True) == Layout(4, 16, 1, False)
    assert layout(cpus=2, gpus=4, on_device=True) == Layout(4, 1, 1, False)
    assert layout(cpus=8, gpus=0, on_device=True) == layout(cpus=8, gpus=0)  # no GPU: as without it


@pytest.mark.parametrize(("options", "words"), [
    ({"preprocessing": "gpu", "device": "cpu"}, "preprocessing: gpu, but the sessions run on the CPU (device: cpu)"),
    ({"preprocessing": "device"}, "preprocessing must be auto, host or gpu, got 'device'"),
])  # fmt: skip
def test_gpu_preprocessing_on_ray_is_refused_before_ray_starts_where_it_cannot_run(tmp_path, options, words):
    import re

    from core.errors import UserError
    from service.bulk import predict_on_ray
    from tests.tiny_onnx import tiny_graph

    image = tmp_path / "a.png"
    Image.new("RGB", (32, 32)).save(image)
    with pytest.raises(UserError, match=re.escape(words)):
        predict_on_ray(str(tiny_graph(tmp_path / "m.onnx")), [image], tmp_path / "out", **options)
    assert not (tmp_path / "out").exists()
