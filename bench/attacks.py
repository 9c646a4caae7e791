"""Replays the hostile requests of issue 19 against one worker, and records what each costs.

    python -m bench.attacks [--work runs/attacks] [--slow-seconds 20]

Starts `bentoml serve` (`workers: 1`, the default limits) on the digits-sized model of `bench.serve_load` (random
weights, exported into the work folder's model store), then, one attack at a time: the answer's status, the peak
resident memory of the worker processes (psutil, sampled every 10 ms) above their idle size and against the
worker's decoding budget (limits.decode_budget_bytes), and the latency of ordinary requests (one 32x32 PNG) sent
while the attack runs. Writes bench/results/attacks.{json,md} and prints the table.
"""

from __future__ import annotations

import argparse
import io
import json
import socket
import statistics
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from bench.common import cli, write_report
from bench.serve_load import ROOT, SERVE, prepare_models, process_tree, rss_bytes, server, store_env
from service.config import Limits


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.attacks", description=__doc__.split("\n")[0])
    p.add_argument("--work", default="runs/attacks")
    p.add_argument("--out", default="bench/results/attacks")
    p.add_argument("--slow-seconds", type=float, default=20.0, help="how long the 1 byte/s header client may go on")
    return p.parse_args(argv)


def _image(array: np.ndarray, fmt: str, mode: str | None = None, **options: Any) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(array, mode).save(out, fmt, **options)
    return out.getvalue()


def _forty_megapixels(fmt: str) -> bytes:
    """A ~40-megapixel image (just under the default limit) that compresses to a small file."""
    from PIL import Image

    width, height = 7744, 5164
    gradient = Image.linear_gradient("L").resize((width, height))
    image = Image.merge("RGB", (gradient, gradient.transpose(Image.Transpose.FLIP_LEFT_RIGHT), gradient))
    if fmt == "GIF":
        image = image.convert("P")
    out = io.BytesIO()
    options = {"quality": 60} if fmt in ("JPEG", "WEBP") else {"compression": "tiff_deflate"} if fmt == "TIFF" else {}
    image.save(out, fmt, **options)
    return out.getvalue()


class Url:
    def __init__(self, url: str) -> None:
        self.url = url
        self.host, port = url.removeprefix("http://").split(":")
        self.port = int(port)

    def raw(self, data: bytes, read: bool = True, timeout: float = 60) -> str:
        """Send `data` on a connection of its own; the status line answered (or what happened)."""
        with socket.create_connection((self.host, self.port), timeout=timeout) as sock:
            sent = "sent"
            try:
                sock.sendall(data)
            except OSError as e:  # the server answered and closed while we were still sending
                sent = f"closed while sending ({type(e).__name__})"
            if not read:
                return "disconnected"
            try:
                answer = sock.recv(65536)
            except OSError as e:
                return f"{sent}; {type(e).__name__}"
            line = answer.split(b"\r\n")[0].decode() or "closed"
            body = answer.split(b"\r\n\r\n", 1)[-1][:90].decode(errors="replace")
            return f"{line} {body}" if sent == "sent" else f"{sent}; {line} {body}"


def _post_files(url: str, files: list[tuple[str, bytes]], timeout: float = 300) -> str:
    import httpx

    parts = [("images", (name, data, "application/octet-stream")) for name, data in files]
    response = httpx.post(f"{url}/classify", files=parts, timeout=timeout)
    return f"{response.status_code} {response.text[:90]}"


def attacks(target: Url, slow_seconds: float) -> list[tuple[str, Callable[[], str]]]:
    import httpx

    thin = _image(np.zeros((1, 200_000, 3), np.uint8), "PNG")
    thinner = _image(np.zeros((1, 65_000, 3), np.uint8), "PNG")
    deep16 = _image(np.zeros((6000, 6000), np.uint16), "PNG")
    url = target.url

    def big_json() -> str:
        size = 200 * 2**20
        head = f"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {size}\r\n\r\n"
        return target.raw(head.encode() + b'{"model": "' + b"x" * (size - 13) + b'"}')

    def chunked_json() -> str:
        def chunks():
            yield b'{"model": "'
            for _ in range(200):
                yield b"x" * 2**20

        try:
            response = httpx.post(f"{url}/classify", content=chunks(), timeout=60,
                                  headers={"content-type": "application/json"})  # fmt: skip
        except httpx.HTTPError as e:
            return f"closed while sending ({type(e).__name__})"
        return f"{response.status_code} {response.text[:90]}"

    def deep(kind: str) -> str:
        value = "[" * 1000 + "]" * 1000
        if kind == "json":
            response = httpx.post(f"{url}/classify", content=f'{{"top_k": {value}}}', timeout=60,
                                  headers={"content-type": "application/json"})  # fmt: skip
        else:
            response = httpx.post(f"{url}/classify", files=[("images", ("d.png", thin, "image/png"))],
                                  data={"top_k": value}, timeout=60)  # fmt: skip
        return f"{response.status_code} {response.text[:90]}"

    def disconnect() -> str:
        head = b"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
        return target.raw(head + b'{"top_k": ' + b" " * 1000, read=False)

    def pickle() -> str:
        response = httpx.post(f"{url}/classify", content=b"\x80\x04K\x01.", timeout=60,
                              headers={"content-type": "application/vnd.bentoml+pickle"})  # fmt: skip
        return f"{response.status_code} {response.text[:90]}"

    def slow_headers() -> str:
        line = b"POST /classify HTTP/1.1\r\nHost: x\r\n" * 10
        started = time.monotonic()
        with socket.create_connection((target.host, target.port), timeout=slow_seconds + 5) as sock:
            sock.settimeout(1.0)
            for byte in line:
                if time.monotonic() - started > slow_seconds:
                    return f"still open after {slow_seconds:g} s"
                try:
                    sock.sendall(bytes([byte]))
                    if sock.recv(1024) == b"":
                        return f"closed by the server after {time.monotonic() - started:.1f} s"
                except TimeoutError:
                    continue
                except OSError:
                    return f"closed by the server after {time.monotonic() - started:.1f} s"
        return "sent every byte"

    out: list[tuple[str, Callable[[], str]]] = [
        ("4 x 200,000x1 PNG", lambda: _post_files(url, [("t.png", thin)] * 4)),
        ("64 x 65,000x1 PNG", lambda: _post_files(url, [("t.png", thinner)] * 64)),
        ("4 x 16-bit 6000x6000 PNG", lambda: _post_files(url, [("d.png", deep16)] * 4)),
    ]
    for fmt in ("PNG", "WEBP", "JPEG", "TIFF", "GIF"):
        data = _forty_megapixels(fmt)
        out.append((f"~40 MP {fmt} ({len(data) // 1024} KB)", lambda data=data: _post_files(url, [("big", data)])))
    out += [
        ("200 MB JSON body (Content-Length)", big_json),
        ("200 MB JSON body (chunked)", chunked_json),
        ("JSON nested 1,000 deep", lambda: deep("json")),
        ("form value nested 1,000 deep", lambda: deep("form")),
        ("disconnect mid-body", disconnect),
        ("pickle content type", pickle),
        (f"headers at 1 byte/s (up to {slow_seconds:g} s)", slow_headers),
    ]
    return out


def measure(url: str, workers: list, attack: Callable[[], str], normal: bytes) -> dict[str, Any]:
    """Run `attack`; meanwhile sample the workers' memory and send ordinary requests one after another."""
    import httpx

    done = threading.Event()
    before = rss_bytes(workers)
    peak = [before]
    latencies: list[float] = []
    statuses: list[int] = []

    def sample() -> None:
        while not done.is_set():
            peak.append(rss_bytes(workers))
            time.sleep(0.01)

    def probe() -> None:
        with httpx.Client(timeout=120) as client:
            time.sleep(0.05)
            while True:
                started = time.perf_counter()
                response = client.post(f"{url}/classify", files=[("images", ("n.png", normal, "image/png"))])
                latencies.append(time.perf_counter() - started)
                statuses.append(response.status_code)
                if done.is_set():
                    break
                time.sleep(0.05)

    threads = [threading.Thread(target=sample), threading.Thread(target=probe)]
    for thread in threads:
        thread.start()
    started = time.perf_counter()
    try:
        answer = attack()
    except Exception as e:  # noqa: BLE001 - a client-side failure is itself a result to report
        answer = f"client error: {type(e).__name__}: {e}"
    seconds = time.perf_counter() - started
    done.set()
    for thread in threads:
        thread.join()
    return {"answer": answer, "seconds": round(seconds, 2), "peak_rss": max(peak), "rss_before": before,
            "normal_ms_median": round(1000 * statistics.median(latencies), 1),
            "normal_ms_max": round(1000 * max(latencies), 1), "normal_statuses": sorted(set(statuses))}  # fmt: skip


def run(args: argparse.Namespace) -> None:
    work, env = store_env(args.work)
    prepare_models(["digits"], work)
    serving = work / "serving-attacks.yaml"
    serving.write_text("default_model: digits\nmodels: [digits]\nworkers: 1\n")
    budget = Limits().decode_budget_bytes
    normal = _image(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8), "PNG")
    rows = []
    log = work / "serve-attacks.log"
    with server(SERVE, {**env, "SERVING_CONFIG": str(serving)}, log, "/readyz") as (url, proc):
        workers = process_tree(proc)[1:]  # the arbiter's children: the worker (and any process it starts)
        import httpx

        for _ in range(20):  # warm: the first requests pay one-off costs
            httpx.post(f"{url}/classify", files=[("images", ("n.png", normal, "image/png"))], timeout=60)
        idle = rss_bytes(workers)
        print(f"worker idle RSS {idle / 2**20:.0f} MB; decoding budget {budget / 2**20:.0f} MB", flush=True)
        for name, attack in attacks(Url(url), args.slow_seconds):
            result = measure(url, workers, attack, normal)
            result["name"] = name
            result["peak_above_idle_mb"] = round((result["peak_rss"] - idle) / 2**20, 1)
            result["peak_above_before_mb"] = round((result["peak_rss"] - result["rss_before"]) / 2**20, 1)
            rows.append(result)
            print(json.dumps(result), flush=True)
            time.sleep(0.5)
        alive = proc.poll() is None
    text = log.read_text()
    report = {"idle_rss_mb": round(idle / 2**20, 1), "budget_mb": round(budget / 2**20, 1), "rows": rows,
              "server_alive_after": alive, "status_500_lines": text.count("status=500"),
              "tracebacks": text.count("Traceback"), "error_lines": text.count("[ERROR]")}  # fmt: skip
    lines = [
        "# Attacks (issue 19) against one worker",
        "",
        f"`python -m bench.attacks`: `workers: 1`, default limits; worker idle RSS {report['idle_rss_mb']} MB, "
        f"decoding budget {report['budget_mb']} MB (limits.decode_budget_bytes). 'normal' is a 32x32 PNG sent "
        "over and over while the attack runs.",
        "",
        "| attack | answer | attack s | worker peak MB above idle (above its level before) | normal request ms "
        "(median / max) |",
        "|---|---|---:|---:|---:|",
    ]
    for r in rows:
        answer = r["answer"].replace("|", "/")[:70]
        lines.append(f"| {r['name']} | {answer} | {r['seconds']} | {r['peak_above_idle_mb']} "
                     f"({r['peak_above_before_mb']}) | "
                     f"{r['normal_ms_median']} / {r['normal_ms_max']} |")  # fmt: skip
    lines += [
        "",
        f"Server log: {report['status_500_lines']} answers with status 500, {report['tracebacks']} tracebacks, "
        f"{report['error_lines']} ERROR lines; the server {'kept serving' if alive else 'had exited'}.",
        "",
    ]
    write_report(ROOT / args.out, report, "\n".join(lines))
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    return cli(run, _parse, argv)


if __name__ == "__main__":
    sys.exit(main())
