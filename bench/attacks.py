"""Replays the hostile requests and connections of issues 19 and 31 against one worker, and records what each costs.

    python -m bench.attacks [--work runs/attacks] [--slow-seconds 20] [--only TEXT ...]

Starts `bentoml serve` (`workers: 1`, the default limits and connection settings) on the digits-sized model of
`bench.serve_load` (random weights, exported into the work folder's model store), then, one attack at a time: the
answer, when the server closed the attack's connections (against their deadlines: connections.header_timeout_s
from opening or from the last answer, connections.body_timeout_s from the request), the peak resident memory and
open files of the worker processes (psutil, sampled every 10 ms) above their idle level, and the latency of
ordinary requests (one 32x32 PNG, on a connection opened before the attack, from a process of its own) sent while
the attack runs. Writes bench/results/attacks.{json,md} and prints the table.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import multiprocessing
import random
import selectors
import socket
import statistics
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, cast

import numpy as np

from bench.common import cli, write_report
from bench.serve_load import ROOT, SERVE, prepare_models, process_tree, rss_bytes, server, store_env
from service import connections
from service.config import Connections, Limits

SLACK_S = 1.0  # a connection closed within this of its deadline is on time (timers, a loaded 2-core machine)
MIXED_S = 45.0  # the mixed attack's length, as issue 31's


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.attacks", description=__doc__.split("\n")[0])
    p.add_argument("--work", default="runs/attacks")
    p.add_argument("--out", default="bench/results/attacks")
    p.add_argument("--slow-seconds", type=float, default=20.0, help="how long the 1 byte/s header client may go on")
    p.add_argument("--only", action="append", default=[], help="run only the attacks whose name holds this text "
                   "(repeatable)")  # fmt: skip
    return p.parse_args(argv)


@dataclass
class Outcome:
    """What an attack saw: the answer(s), and for attacks on connections when the server closed them."""

    answer: str
    closed_s: float | None = None  # the latest close, in seconds from the moment its deadline counts from
    deadline_s: float | None = None  # the deadline those seconds are held against
    late: int = 0  # connections still open (or closed) past their deadline + SLACK_S


def _image(array: np.ndarray, fmt: str, mode: str | None = None, **options: Any) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(array, mode).save(out, fmt, **options)
    return out.getvalue()


def _forty_megapixels(fmt: str, noise_rows: int = 0) -> bytes:
    """A ~40-megapixel image (just under the default limit) that compresses to a small file, or with `noise_rows`
    rows of noise to a larger one."""
    from PIL import Image

    width, height = 7744, 5164
    gradient = Image.linear_gradient("L").resize((width, height))
    image = Image.merge("RGB", (gradient, gradient.transpose(Image.Transpose.FLIP_LEFT_RIGHT), gradient))
    if noise_rows:
        pixels = np.asarray(image).copy()
        pixels[:noise_rows] = np.random.default_rng(0).integers(0, 256, (noise_rows, width, 3), dtype=np.uint8)
        image = Image.fromarray(pixels)
    if fmt == "GIF":
        image = image.convert("P")
    out = io.BytesIO()
    options = {"quality": 60} if fmt in ("JPEG", "WEBP") else {"compression": "tiff_deflate"} if fmt == "TIFF" else {}
    image.save(out, fmt, **({"compress_level": 1} if noise_rows else options))
    return out.getvalue()


def _worst_png(limit: int) -> bytes:
    """A 40-megapixel PNG as close under `limit` bytes (max_image_bytes) as 5 rows of noise allow: the most pixels
    and the most bytes one image may have."""
    rows = int(limit / (7744 * 3))
    while len(data := _forty_megapixels("PNG", rows)) > limit:
        rows -= 5
    return data


def _length(head: bytes) -> int | None:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return None


def _read_answer(sock: socket.socket) -> bytes:
    """One answer (status line, headers and a Content-Length body) or what came before the server closed."""
    answer = b""
    while b"\r\n\r\n" not in answer or len(answer.split(b"\r\n\r\n", 1)[1]) < (_length(answer) or 0):
        try:
            chunk = sock.recv(65536)
        except OSError:
            break
        if not chunk:
            break
        answer += chunk
    return answer


def _status(answer: bytes) -> str:
    line = answer.split(b"\r\n", 1)[0].decode(errors="replace")
    return line.removeprefix("HTTP/1.1 ") or "no answer"


def _closed_within(sock: socket.socket, limit_s: float) -> bool:
    """Whether the server closes `sock` within `limit_s` (what it sends meanwhile is read and dropped)."""
    deadline = time.monotonic() + limit_s
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            if sock.recv(65536) == b"":
                return True
        except TimeoutError:
            return False
        except OSError:  # reset: closed as well
            return True
    return False


def _trickle(sock: socket.socket, data: bytes, every_s: float, limit_s: float) -> bool:
    """Send `data` a byte every `every_s` until the server closes the connection (True) or `limit_s` passes."""
    deadline = time.monotonic() + limit_s
    for byte in data:
        try:
            sock.sendall(bytes([byte]))
        except OSError:
            return True
        if _closed_within(sock, min(every_s, deadline - time.monotonic())):
            return True
        if time.monotonic() >= deadline:
            return False
    return _closed_within(sock, deadline - time.monotonic())


class Target:
    def __init__(self, url: str, settings: Connections) -> None:
        self.url = url
        self.host, port = url.removeprefix("http://").split(":")
        self.port = int(port)
        self.settings = settings

    def connect(self, timeout: float = 60) -> socket.socket:
        return socket.create_connection((self.host, self.port), timeout=timeout)

    def raw(self, data: bytes, read: bool = True, timeout: float = 60) -> str:
        """Send `data` on a connection of its own; the status line answered (or what happened)."""
        with self.connect(timeout) as sock:
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


HEADERS = b"POST /classify HTTP/1.1\r\nHost: x\r\n" * 10  # never ends: a client that sends its headers for ever


def connection_attacks(target: Target, normal: bytes) -> list[tuple[str, Callable[[], Outcome]]]:
    """Issue 31's attacks on connections, each against its deadline."""
    header_s, body_s = target.settings.header_timeout_s, target.settings.body_timeout_s

    def cut_body_then_a_byte() -> Outcome:
        # a multipart body declared 10 MB (streamed, so parsed as it comes) whose first 100 bytes are not multipart:
        # refused at once; then one more byte, which before issue 31 held the connection for ever
        head = (b"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                b"Content-Length: 10000000\r\n\r\n")  # fmt: skip
        with target.connect() as sock:
            sock.sendall(head + b"x" * 100)
            answer = _read_answer(sock)
            answered = time.monotonic()
            with contextlib.suppress(OSError):
                sock.sendall(b"x")
            closed = _closed_within(sock, header_s + 30)
            seconds = time.monotonic() - answered
        return Outcome(_status(answer), seconds if closed else None, 0.0, int(not closed or seconds > SLACK_S))

    def trickle_after(first: bytes, then: bytes, what: str) -> Callable[[], Outcome]:
        def attack() -> Outcome:
            with target.connect() as sock:
                sock.sendall(first)
                answer = _read_answer(sock)
                answered = time.monotonic()
                closed = _trickle(sock, then, 2.0, header_s + 30)  # 1 byte every 2 s, as issue 31 sent them
                seconds = time.monotonic() - answered
            late = int(not closed or seconds > header_s + SLACK_S)
            return Outcome(f"{_status(answer)}, then {what}", seconds if closed else None, header_s, late)

        return attack

    upload = (b'--b\r\nContent-Disposition: form-data; name="images"; filename="n.png"\r\n'
              b"Content-Type: image/png\r\n\r\n" + normal + b"\r\n--b--\r\n")  # fmt: skip
    answered_200 = (b"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                    b"Content-Length: %d\r\n\r\n" % len(upload) + upload)  # fmt: skip
    unread_body = b"PUT /classify HTTP/1.1\r\nHost: x\r\nContent-Length: 60\r\n\r\n{"

    def slow_bodies() -> Outcome:
        head = b"POST /classify HTTP/1.1\r\nHost: x\r\n"
        multipart = b"Content-Type: multipart/form-data; boundary=b\r\n"
        bodies = {  # (headers, body sent at once, body sent a byte a second)
            "chunked, never ends": (head + multipart + b"Transfer-Encoding: chunked\r\n\r\n", b"5\r\n--b\r\n", b""),
            "Content-Length over the body": (head + multipart + b"Content-Length: 5000\r\n\r\n", b"--b\r\n", b""),
            "Expect: 100-continue, no body": (
                head + b"Content-Type: image/png\r\nExpect: 100-continue\r\nContent-Length: 5000\r\n\r\n", b"", b""),
            "multipart at 1 byte/s": (head + multipart + b"Content-Length: %d\r\n\r\n" % len(upload), b"", upload),
        }  # fmt: skip

        def one(headers: bytes, now: bytes, slowly: bytes) -> tuple[str, float | None]:
            with target.connect() as sock:
                sock.sendall(headers + now)
                started = time.monotonic()
                sock.settimeout(1.0)
                answer = b""
                for byte in slowly or bytes(int(body_s + 30)):
                    if slowly:
                        with contextlib.suppress(OSError):
                            sock.sendall(bytes([byte]))
                    try:
                        answer = sock.recv(65536)
                    except TimeoutError:
                        continue
                    except OSError:
                        break
                    if answer.startswith(b"HTTP/1.1 100"):  # the interim answer to Expect: go on waiting
                        answer = b""
                        continue
                    break
                closed = _closed_within(sock, 5.0)
                return _status(answer), time.monotonic() - started if closed else None

        with ThreadPoolExecutor(len(bodies)) as pool:
            results = list(pool.map(lambda b: one(*b), bodies.values()))
        answers = Counter(status for status, _ in results)
        closes = [s for _, s in results if s is not None]
        late = sum(s is None or s > body_s + SLACK_S for _, s in results)
        text = ", ".join(f"{n} x {status}" for status, n in answers.items()) + f" ({'; '.join(bodies)})"
        return Outcome(text, max(closes) if closes else None, body_s, late)

    def up_to_the_cap() -> Outcome:
        cap = connections.max_open_or_exit(target.settings.max_open)  # the worker's, as this machine's limit is
        opened: list[tuple[socket.socket, float]] = []
        refused = failed = 0
        for _ in range(cap + 50):
            try:
                opened.append((socket.create_connection((target.host, target.port), timeout=10), time.monotonic()))
            except OSError:
                failed += 1
        selector = selectors.DefaultSelector()
        for sock, at in opened:
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ, at)
        latest, late, deadline = 0.0, 0, time.monotonic() + header_s + 30
        while selector.get_map() and time.monotonic() < deadline:
            for key, _ in selector.select(timeout=1.0):
                sock, at = cast(socket.socket, key.fileobj), key.data
                try:
                    data = sock.recv(65536)
                except OSError:
                    data = b""
                if data.startswith(b"HTTP/1.1 503"):
                    refused += 1
                if data:
                    continue  # the 503's close comes next
                seconds = time.monotonic() - at
                latest, late = max(latest, seconds), late + (seconds > header_s + SLACK_S)
                selector.unregister(sock)
                sock.close()
        late += len(selector.get_map())  # still open
        for key in list(selector.get_map().values()):
            cast(socket.socket, key.fileobj).close()
        text = f"{len(opened)} opened (cap {cap}): {refused} answered 503 at once" + (
            f", {failed} failed to connect" if failed else ""
        )
        return Outcome(text, latest, header_s, late)

    return [
        ("cut body answered 400, then 1 byte more", cut_body_then_a_byte),
        ("headers at 1 byte / 2 s after a 200", trickle_after(answered_200, HEADERS, "headers a byte / 2 s")),
        ("after a 405 before its body: the rest of it, then headers, 1 byte / 2 s",
         trickle_after(unread_body, b" " * 59 + HEADERS, "body and headers a byte / 2 s")),
        ("4 slow or unfinished bodies at once", slow_bodies),
        ("idle connections up to the cap and 50 more", up_to_the_cap),
    ]  # fmt: skip


def attacks(target: Target, slow_seconds: float, normal: bytes) -> list[tuple[str, Callable[[], Outcome | str]]]:
    import httpx

    thin = _image(np.zeros((1, 200_000, 3), np.uint8), "PNG")
    thinner = _image(np.zeros((1, 65_000, 3), np.uint8), "PNG")
    deep16 = _image(np.zeros((6000, 6000), np.uint16), "PNG")
    worst = _worst_png(Limits().max_image_bytes)
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
                                  data={"model": value}, timeout=60)  # fmt: skip
        return f"{response.status_code} {response.text[:90]}"

    def disconnect() -> str:
        head = b"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
        return target.raw(head + b'{"top_k": ' + b" " * 1000, read=False)

    def pickle() -> str:
        response = httpx.post(f"{url}/classify", content=b"\x80\x04K\x01.", timeout=60,
                              headers={"content-type": "application/vnd.bentoml+pickle"})  # fmt: skip
        return f"{response.status_code} {response.text[:90]}"

    def slow_headers(seconds: float) -> Outcome:
        header_s = target.settings.header_timeout_s
        with target.connect(seconds + 5) as sock:
            opened = time.monotonic()
            closed = _trickle(sock, HEADERS, 1.0, seconds)
            taken = time.monotonic() - opened
        late = int(taken > header_s + SLACK_S if closed else seconds > header_s + SLACK_S)
        answer = f"closed by the server after {taken:.1f} s" if closed else f"still open after {seconds:g} s"
        return Outcome(answer, taken if closed else None, header_s, late)

    def worst_at_once(n: int) -> str:
        with ThreadPoolExecutor(n) as pool:
            answers = list(pool.map(lambda _: _post_files(url, [("w.png", worst)] * 64, timeout=600), range(n)))
        statuses = Counter(a.split(" ", 1)[0] for a in answers)
        return ", ".join(f"{count} x {status}" for status, count in statuses.items()) + f": {answers[-1][:80]}"

    out: list[tuple[str, Callable[[], Outcome | str]]] = [
        ("4 x 200,000x1 PNG", lambda: _post_files(url, [("t.png", thin)] * 4)),
        ("64 x 65,000x1 PNG", lambda: _post_files(url, [("t.png", thinner)] * 64)),
        ("4 x 16-bit 6000x6000 PNG", lambda: _post_files(url, [("d.png", deep16)] * 4)),
    ]
    formats = {fmt: _forty_megapixels(fmt) for fmt in ("PNG", "WEBP", "JPEG", "TIFF", "GIF")}
    for fmt, data in formats.items():
        out.append((f"~40 MP {fmt} ({len(data) // 1024} KB)", lambda data=data: _post_files(url, [("big", data)])))
    out += [
        ("200 MB JSON body (Content-Length)", big_json),
        ("200 MB JSON body (chunked)", chunked_json),
        ("JSON nested 1,000 deep", lambda: deep("json")),
        ("form value nested 1,000 deep", lambda: deep("form")),
        ("disconnect mid-body", disconnect),
        ("pickle content type", pickle),
        *connection_attacks(target, normal),
    ]
    # the mixed attack below: all of these, the cap's excepted, with shorter slow headers and fewer worst images
    mixed = [attack for name, attack in out if "cap" not in name]
    mixed += [lambda: slow_headers(5.0), lambda: _post_files(url, [("w.png", worst)] * 8)]
    worst_name = f"64 x {len(worst) / 2**20:.1f} MB 40 MP PNG"
    out += [
        (f"headers at 1 byte/s (up to {slow_seconds:g} s)", lambda: slow_headers(slow_seconds)),
        (f"{worst_name}, 1 request", lambda: worst_at_once(1)),
        (f"{worst_name}, 3 requests at once", lambda: worst_at_once(3)),
    ]

    def mixed_attack() -> str:
        ends = time.monotonic() + MIXED_S
        seen: Counter = Counter()

        def client(seed: int) -> None:
            rng = random.Random(seed)
            while time.monotonic() < ends:
                try:
                    outcome = rng.choice(mixed)()
                    answer = outcome.answer if isinstance(outcome, Outcome) else outcome
                except Exception as e:  # noqa: BLE001 - a client-side failure is itself a result
                    answer = f"client error {type(e).__name__}"
                seen[answer.split(" ", 1)[0]] += 1

        with ThreadPoolExecutor(4) as pool:
            list(pool.map(client, range(4)))
        return "answers by first word: " + ", ".join(f"{k} {n}" for k, n in seen.most_common())

    out.append(
        (f"mixed: 4 clients, {MIXED_S:g} s of all of the above but the cap, 8 worst images a request", mixed_attack)
    )
    return out


def open_files(processes: list) -> int:
    import psutil

    total = 0
    for p in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += p.num_fds()
    return total


def _probe(url: str, normal: bytes, ready: Any, done: Any, results: Any) -> None:
    """Ordinary requests one after another on one kept-alive connection, opened before `ready` is set, until `done`;
    puts (latencies in s, statuses) on `results`. Run in a process of its own: in a thread of the attacking process it
    waited for the GIL behind the attacks' own Python work (building a 200 MB body holds it for a tenth of a second),
    and that wait was counted as the server's."""
    import httpx

    latencies: list[float] = []
    statuses: list[int | str] = []
    files = [("images", ("n.png", normal, "image/png"))]
    with httpx.Client(timeout=120) as client:
        client.post(f"{url}/classify", files=files)  # the connection, opened
        ready.set()
        while True:
            started = time.perf_counter()
            try:
                status: int | str = client.post(f"{url}/classify", files=files).status_code
            except httpx.HTTPError as e:
                status = type(e).__name__
            latencies.append(time.perf_counter() - started)
            statuses.append(status)
            if done.is_set():
                break
            time.sleep(0.05)
    results.put((latencies, statuses))


def measure(url: str, workers: list, attack: Callable[[], Outcome | str], normal: bytes) -> dict[str, Any]:
    """Run `attack`; meanwhile sample the workers' memory and open files, and send ordinary requests one after
    another on one kept-alive connection, opened before the attack, from a process of their own (`_probe`)."""
    context = multiprocessing.get_context("spawn")
    ready, done, results = context.Event(), context.Event(), context.Queue()
    prober = context.Process(target=_probe, args=(url, normal, ready, done, results))
    prober.start()
    if not ready.wait(120):
        raise RuntimeError("the probe's first request was not answered within 120 s")
    sampled = threading.Event()
    before = rss_bytes(workers)
    peak, files = [before], [open_files(workers)]

    def sample() -> None:
        while not sampled.is_set():
            peak.append(rss_bytes(workers))
            files.append(open_files(workers))
            time.sleep(0.01)

    sampler = threading.Thread(target=sample)
    sampler.start()
    started = time.perf_counter()
    try:
        outcome = attack()
    except Exception as e:  # noqa: BLE001 - a client-side failure is itself a result to report
        outcome = f"client error: {type(e).__name__}: {e}"
    seconds = time.perf_counter() - started
    done.set()
    latencies, statuses = results.get(timeout=300)
    prober.join()
    sampled.set()
    sampler.join()
    outcome = outcome if isinstance(outcome, Outcome) else Outcome(outcome)
    return {"answer": outcome.answer, "closed_s": None if outcome.closed_s is None else round(outcome.closed_s, 1),
            "deadline_s": outcome.deadline_s, "late": outcome.late, "seconds": round(seconds, 2),
            "peak_rss": max(peak), "rss_before": before, "files_before": files[0], "peak_files": max(files),
            "normal_ms_median": round(1000 * statistics.median(latencies), 1),
            "normal_ms_max": round(1000 * max(latencies), 1),
            "normal_statuses": sorted({str(s) for s in statuses})}  # fmt: skip


def run(args: argparse.Namespace) -> None:
    work, env = store_env(args.work)
    prepare_models(["digits"], work)
    serving = work / "serving-attacks.yaml"
    serving.write_text("default_model: digits\nmodels: [digits]\nworkers: 1\n")
    budget = Limits().decode_budget_bytes
    settings = Connections()
    normal = _image(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8), "PNG")
    rows = []
    log = work / "serve-attacks.log"
    with server(SERVE, {**env, "SERVING_CONFIG": str(serving)}, log, "/readyz") as (url, proc):
        workers = process_tree(proc)[1:]  # the arbiter's children: the worker (and any process it starts)
        import httpx

        for _ in range(20):  # warm: the first requests pay one-off costs
            httpx.post(f"{url}/classify", files=[("images", ("n.png", normal, "image/png"))], timeout=60)
        idle, idle_files = rss_bytes(workers), open_files(workers)
        print(f"worker idle RSS {idle / 2**20:.0f} MB, {idle_files} open files; decoding budget "
              f"{budget / 2**20:.0f} MB", flush=True)  # fmt: skip
        for name, attack in attacks(Target(url, settings), args.slow_seconds, normal):
            if args.only and not any(text in name for text in args.only):
                continue
            result = measure(url, workers, attack, normal)
            result["name"] = name
            result["peak_above_idle_mb"] = round((result["peak_rss"] - idle) / 2**20, 1)
            result["peak_above_before_mb"] = round((result["peak_rss"] - result["rss_before"]) / 2**20, 1)
            rows.append(result)
            print(json.dumps(result), flush=True)
            time.sleep(0.5)
        after = rss_bytes(workers)
        alive = proc.poll() is None
    text = log.read_text()
    report = {"idle_rss_mb": round(idle / 2**20, 1), "idle_files": idle_files, "budget_mb": round(budget / 2**20, 1),
              "rss_after_mb": round(after / 2**20, 1), "rows": rows, "server_alive_after": alive,
              "status_500_lines": text.count("status=500"), "status_504_lines": text.count("status=504"),
              "tracebacks": text.count("Traceback"), "error_lines": text.count("[ERROR]"),
              "cap_lines": text.count("holds its cap of"),
              "late_connections": sum(r["late"] for r in rows)}  # fmt: skip
    write_report(ROOT / args.out, report, markdown(report, settings))
    print(markdown(report, settings))


def markdown(report: dict[str, Any], settings: Connections) -> str:
    lines = [
        "# Attacks (issues 19 and 31) against one worker",
        "",
        f"`python -m bench.attacks`: `workers: 1`, default limits and connection settings (header_timeout_s "
        f"{settings.header_timeout_s:g}, body_timeout_s {settings.body_timeout_s:g}); worker idle RSS "
        f"{report['idle_rss_mb']} MB, {report['idle_files']} open files, decoding budget {report['budget_mb']} MB. "
        "'closed' is when the server closed the attack's connection, from the moment its deadline counts from "
        "(opening, or the last answer, or the request); 'normal' is a 32x32 PNG sent over and over meanwhile on a "
        "connection opened before the attack.",
        "",
        "| attack | answer | closed s (deadline) | late | attack s | worker peak MB above idle (above its level "
        "before) | peak open files | normal request ms (median / max), statuses |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["rows"]:
        answer = r["answer"].replace("|", "/")[:110]
        closed = (
            "-"
            if r["closed_s"] is None
            else f"{r['closed_s']}" + (f" ({r['deadline_s']:g})" if r["deadline_s"] is not None else "")
        )
        lines.append(f"| {r['name']} | {answer} | {closed} | {r['late']} | {r['seconds']} | "
                     f"{r['peak_above_idle_mb']} ({r['peak_above_before_mb']}) | {r['peak_files']} | "
                     f"{r['normal_ms_median']} / {r['normal_ms_max']}, {' '.join(r['normal_statuses'])} |")  # fmt: skip
    lines += [
        "",
        f"Connections open past their deadline: {report['late_connections']}. Server log: "
        f"{report['status_500_lines']} answers with status 500, {report['status_504_lines']} with 504, "
        f"{report['tracebacks']} tracebacks, {report['error_lines']} ERROR lines, {report['cap_lines']} line(s) "
        f"saying the connection cap was reached; worker RSS after all {report['rss_after_mb']} MB; the server "
        f"{'kept serving' if report['server_alive_after'] else 'had exited'}.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    return cli(run, _parse, argv)


if __name__ == "__main__":
    sys.exit(main())
