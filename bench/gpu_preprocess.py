"""The gpu preprocessing backend against the host path: pixel parity and host CPU per image (issue 28).

    python -m bench.gpu_preprocess                       # GPU 0 where there is one, else the CPU variant
    python -m bench.gpu_preprocess --cpu --repeats 20    # the CPU variant (what tests/test_preprocessing.py runs)
    python -m bench.gpu_preprocess --model resnet50 --parity 300 --work runs/gpu_check    # and top-1 through it

For JPEG cuts of the scikit-image photos (500x375 and other sizes, both orientations) at 256 -> 224 px, bilinear:
each image's crop made by service/device_pixels.py and by the host path (Pillow, service/decode.py), whether 8
threads calling the device at once get the same crops, and the CPU time (process time: every thread of this process)
and wall time per image of each, one image at a time, and from 8 threads at once (images/s, CPU an image, images a
decoder call). Then a parity set of `--parity` JPEGs (random crops of the
photos at random sizes and qualities, the same every run): the share of values equal and within one level and, with
`--model` (one of bench/serve_load.py's, random weights, exported into --work as serve_load does and kept for it),
the share of images whose top-1 class is the same from either crop, and the largest difference in a probability;
and the largest difference between the graph's answers for a batch of the device's crops gathered where they were
made (service/device_batch.py, what the service runs) and for the same crops brought to the host: 0.
Writes bench/results/gpu_preprocess.{json,md} (or --out).
"""

from __future__ import annotations

import argparse
import io
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from bench.common import cli, write_report

PREPROCESS = {"resize_size": 256, "crop_size": 224, "interpolation": "bilinear"}


def images() -> list[tuple[str, bytes]]:
    from PIL import Image
    from skimage import data

    out = []
    for name in ("astronaut", "chelsea", "coffee", "rocket"):
        photo = Image.fromarray(getattr(data, name)()).convert("RGB")
        for size in ((500, 375), (375, 500), (640, 427), (300, 300), (1024, 683)):
            buf = io.BytesIO()
            photo.resize(size).save(buf, "JPEG", quality=90)
            out.append((f"{name}-{size[0]}x{size[1]}", buf.getvalue()))
    return out


def parity_images(count: int, seed: int = 0) -> list[tuple[str, bytes]]:
    """`count` JPEGs of the photos: a random crop (a quarter of the photo or more), resized to a camera's or a
    client's size in either orientation, at a quality from 70 to 95."""
    from PIL import Image
    from skimage import data

    rng = np.random.default_rng(seed)
    photos = [Image.fromarray(getattr(data, n)()).convert("RGB") for n in ("astronaut", "chelsea", "coffee", "rocket")]
    sizes = ((500, 375), (640, 480), (800, 600), (1024, 768), (320, 240), (600, 600), (1280, 720), (450, 300))
    out = []
    for i in range(count):
        photo = photos[i % len(photos)]
        w, h = photo.size
        cw, ch = int(w * rng.uniform(0.5, 1)), int(h * rng.uniform(0.5, 1))
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        size = sizes[int(rng.integers(len(sizes)))]
        size = size if rng.random() < 0.5 else size[::-1]
        buf = io.BytesIO()
        photo.crop((x, y, x + cw, y + ch)).resize(size).save(buf, "JPEG", quality=int(rng.integers(70, 96)))
        out.append((f"parity-{i}", buf.getvalue()))
    return out


def parity(device, limits, preprocess: dict[str, Any], count: int, graph=None, kept=None) -> dict[str, Any]:
    """Pixel parity over `count` parity images and, with a graph, top-1 parity through it (batches of 64); with
    `kept` (the device as the service makes it), the same batches gathered where its crops are (device_batch.py)
    must get the graph's answers for those crops brought to the host."""
    from PIL import Image

    from service.decode import decode

    equal = within = total = taken = 0
    host_crops, device_crops = [], []
    for name, data in parity_images(count):
        host, made = decode(data, name, limits, preprocess), decode(data, name, limits, preprocess, device)
        diff = np.abs(made.astype(np.int16) - host)
        equal, within, total = equal + int((diff == 0).sum()), within + int((diff <= 1).sum()), total + diff.size
        with Image.open(io.BytesIO(data)) as image:  # the header only: what the device takes, the rest is Pillow's
            taken += int(device.takes(image, preprocess))
        host_crops.append(host)
        device_crops.append(made)
    out: dict[str, Any] = {"images": count, "on_device": taken, "equal": round(equal / total, 6),
                           "within_1": round(within / total, 6)}  # fmt: skip
    if graph is not None:
        same, largest = 0, 0.0
        for start in range(0, count, 64):
            a = graph.run(np.stack(host_crops[start : start + 64]))["probabilities"]
            b = graph.run(np.stack(device_crops[start : start + 64]))["probabilities"]
            same += int((a.argmax(1) == b.argmax(1)).sum())
            largest = max(largest, float(np.abs(a - b).max()))
        out.update(top1_same=round(same / count, 6), max_probability_diff=largest)
    if graph is not None and kept is not None:
        from service.device_batch import Crops, Memory, gather, on_host

        memory, gathered = Memory.of(kept), 0.0
        images = parity_images(count)
        for start in range(0, count, 64):
            crops = Crops(decode(data, name, limits, preprocess, kept) for name, data in images[start : start + 64])
            a = gather(graph, [crops], memory)["probabilities"]
            gathered = max(gathered, float(np.abs(a - graph.run(on_host(crops))["probabilities"]).max()))
        out["gathered_max_diff"] = gathered  # 0.0: the batch read in place is the batch brought to the host
    return out


def decoders(device_id: int | None, repeats: int) -> list[dict[str, Any]]:
    """nvImageCodec's decoders one backend kind at a time (on a GPU: the hardware decoder, the CUDA one, the hybrid
    one; here its CPU one) on the timing photos: CPU ms and wall ms an image decoded one a call (as the service's
    threads call it) and 80 a call (what batching decodes across requests would give), and how far the pixels are
    from Pillow's (the share of values within one level, the largest difference)."""
    from PIL import Image

    os.environ.setdefault("PYNVIMGCODEC_VERBOSITY", "0")
    from nvidia import nvimgcodec

    photos = images()
    pillow = [np.asarray(Image.open(io.BytesIO(data)).convert("RGB")) for _, data in photos]
    # (label, backend kinds, decoder options): each alone, then the service's list (service/device_pixels.py); nvJPEG's
    # CUDA decoder does the Huffman step on the CPU for images under a size threshold unless told otherwise
    variants = [("CPU_ONLY", ["CPU_ONLY"], "")] if device_id is None else [
        ("HW_GPU_ONLY", ["HW_GPU_ONLY"], ""), ("GPU_ONLY", ["GPU_ONLY"], ""),
        ("GPU_ONLY, Huffman on the GPU", ["GPU_ONLY"], "nvjpeg_cuda_decoder:hybrid_huffman_threshold=0"),
        ("HYBRID_CPU_GPU", ["HYBRID_CPU_GPU"], ""), ("the service's", ["GPU_ONLY", "HYBRID_CPU_GPU"], ""),
    ]  # fmt: skip
    rows = []
    for kind, kinds, options in variants:
        try:
            decoder = nvimgcodec.Decoder(
                device_id=nvimgcodec.NVIMGCODEC_DEVICE_CPU_ONLY if device_id is None else device_id,
                backends=[nvimgcodec.Backend(getattr(nvimgcodec, k)) for k in kinds],
                options=options,
            )
            first = [decoder.decode(data) for _, data in photos]
        except Exception as e:  # a backend this GPU lacks (the hardware decoder is on A100, H100 and later)
            rows.append({"backend": kind, "error": str(e).splitlines()[0][:200]})
            continue
        made = [np.asarray(d.cpu()) if d is not None else None for d in first]
        within = total = largest = 0
        for got, ref in zip(made, pillow):
            if got is not None and got.shape == ref.shape:
                diff = np.abs(got.astype(np.int16) - ref)
                within, total = within + int((diff <= 1).sum()), total + diff.size
                largest = max(largest, int(diff.max()))
        batch = [data for _, data in photos] * 4  # 80 images a call

        def one_each(decoder=decoder) -> None:
            for _, data in photos:
                if (d := decoder.decode(data)) is not None:  # None: an image this backend cannot decode
                    d.cpu()

        def batched(decoder=decoder, batch=batch) -> None:
            for d in decoder.decode(batch):
                if d is not None:
                    d.cpu()

        one_cpu, one_wall = timed(one_each, repeats)
        many_cpu, many_wall = timed(batched, max(1, repeats // 4))
        rows.append({"backend": kind, "decoded": f"{sum(m is not None for m in made)} of {len(made)}",
                     "within_1": round(within / max(total, 1), 6), "max_diff": largest,
                     "one_cpu_ms": round(one_cpu / len(photos), 3), "one_wall_ms": round(one_wall / len(photos), 3),
                     "batch_cpu_ms": round(many_cpu / len(batch), 3),
                     "batch_wall_ms": round(many_wall / len(batch), 3)})  # fmt: skip
        print(rows[-1], flush=True)
    return rows


class _Counted:
    """A decoder that records how many images each call was given."""

    def __init__(self, decoder) -> None:
        self.decoder, self.calls = decoder, []

    def decode(self, data, **options):
        self.calls.append(len(data) if isinstance(data, list) else 1)
        return self.decoder.decode(data, **options)


def timed(make, repeats: int) -> tuple[float, float]:
    """CPU ms and wall ms per call of `make()`, after one call to warm it."""
    make()
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(repeats):
        make()
    return 1000 * (time.process_time() - cpu) / repeats, 1000 * (time.perf_counter() - wall) / repeats


def run(args: argparse.Namespace) -> dict[str, Any]:
    from core.devices import gpu_present
    from service.config import Limits
    from service.decode import decode
    from service.device_pixels import DevicePixels

    device_id = None if args.cpu or not gpu_present() else 0
    device = DevicePixels(device_id)
    limits = Limits()
    rows = []
    for name, data in images():
        host = decode(data, name, limits, PREPROCESS)
        made = decode(data, name, limits, PREPROCESS, device)
        diff = np.abs(made.astype(np.int16) - host)
        host_cpu, host_wall = timed(lambda d=data, n=name: decode(d, n, limits, PREPROCESS), args.repeats)
        dev_cpu, dev_wall = timed(lambda d=data, n=name: decode(d, n, limits, PREPROCESS, device), args.repeats)
        rows.append({"image": name, "bytes": len(data), "max_diff": int(diff.max()), "host_cpu_ms": round(host_cpu, 3),
                     "host_wall_ms": round(host_wall, 3), "device_cpu_ms": round(dev_cpu, 3),
                     "device_wall_ms": round(dev_wall, 3)})  # fmt: skip
        print(rows[-1], flush=True)
    # the service calls the device from its decoding threads at once: the same images from 8 threads, 4 times over,
    # must give what they gave one at a time
    serial = {name: decode(data, name, limits, PREPROCESS, device) for name, data in images()}
    counted = _Counted(device.decoder)
    device.decoder = counted  # how many images each decoder call took (service/device_pixels.py batches them)
    cpu, wall = time.process_time(), time.perf_counter()
    with ThreadPoolExecutor(8) as threads:
        jobs = [(name, threads.submit(decode, data, name, limits, PREPROCESS, device))
                for _ in range(4) for name, data in images()]  # fmt: skip
        concurrent_same = sum(np.array_equal(job.result(), serial[name]) for name, job in jobs)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    device.decoder = counted.decoder
    threaded = {"images_per_s": round(len(jobs) / wall, 1), "cpu_ms": round(1000 * cpu / len(jobs), 3),
                "images_a_decode_call": round(sum(counted.calls) / max(len(counted.calls), 1), 2)}  # fmt: skip
    print("8 threads:", threaded, flush=True)
    where = "CPU (nvImageCodec's CPU decoder, the CPU provider)" if device_id is None else f"GPU {device_id}"
    graph, preprocess, model = None, PREPROCESS, "pixels only: no --model"
    if args.model:
        from pathlib import Path

        from bench.serve_load import prepare_models
        from core import metadata
        from service.runtime import Graph

        path = prepare_models([args.model], Path(args.work))[args.model]
        # one fixed size, as the service pads to: the parity set's last batch reads its padding from the buffer
        graph = Graph(path, "cpu" if device_id is None else "cuda", sizes=[64])
        preprocess, model = metadata.preprocess_of(graph.meta), f"{args.model} ({graph.provider}, random weights)"
    return {"device": where, "preprocess": PREPROCESS, "concurrent_same": f"{concurrent_same} of {len(jobs)}",
            "threaded": threaded, "rows": rows, "model": model, "decoders": decoders(device_id, args.repeats),
            "parity": parity(device, limits, preprocess, args.parity, graph, DevicePixels(device_id, keep=True))
            if args.parity else None}  # fmt: skip


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "# gpu preprocessing against the host path", "",
        f"Device: {report['device']}; 256 -> 224 px, bilinear; the largest difference of each image below. From 8 "
        f"threads at once, the same crops as one at a time: "
        f"{report['concurrent_same']}, at {report['threaded']}.", "",
        *([f"Parity set ({report['model']}): {report['parity']}", ""] if report.get("parity") else []),
        "| image | bytes | max diff | host CPU ms | host wall ms | device CPU ms | device wall ms |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]  # fmt: skip
    lines += [f"| {r['image']} | {r['bytes']} | {r['max_diff']} | {r['host_cpu_ms']} | {r['host_wall_ms']} | "
              f"{r['device_cpu_ms']} | {r['device_wall_ms']} |" for r in report["rows"]]  # fmt: skip
    lines += ["", "nvImageCodec's decoders alone, per image (decode to the full size, brought to the host), one image "
              "a call and 80 a call; pixels against Pillow's:", "",
              "| backend | decoded | within 1 | max diff | 1 a call: CPU ms | wall ms | 80 a call: CPU ms | wall ms |",
              "|---|---|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for r in report.get("decoders", []):
        if "error" in r:
            lines.append(f"| {r['backend']} | {r['error']} | | | | | | |")
        else:
            lines.append(f"| {r['backend']} | {r['decoded']} | {r['within_1']} | {r['max_diff']} | {r['one_cpu_ms']} | "
                         f"{r['one_wall_ms']} | {r['batch_cpu_ms']} | {r['batch_wall_ms']} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.gpu_preprocess", description=__doc__.split("\n")[0])
    p.add_argument("--cpu", action="store_true", help="the CPU variant even where there is a GPU")
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--parity", type=int, default=100, help="JPEGs in the parity set: the share of values equal and "
                   "within one level (0: none)")  # fmt: skip
    p.add_argument("--model", help="bench/serve_load.py's model (resnet50, ...) for top-1 parity")
    p.add_argument("--work", default="runs/serve_load", help="where --model is exported (serve_load's folder)")
    p.add_argument("--out", default="bench/results/gpu_preprocess")
    return p.parse_args(argv)


def main(args: argparse.Namespace) -> None:
    report = run(args)
    write_report(args.out, report, markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    raise SystemExit(cli(main, parse_args, None))
