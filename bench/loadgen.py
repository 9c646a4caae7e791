"""A load generator that is not the bottleneck: several client processes, keep-alive connections, and
pre-built multipart bodies, so a request costs the client one `send` and one response parse.

Closed loop: `concurrency` clients each send their next request as soon as the last one is answered.
Open loop: requests are due at fixed times (`rate` per second) whatever the server does, and latency
is counted from the due time, so a stalled server cannot hide its queue (no coordinated omission).
The generator's own CPU seconds are reported, so a reader can see it had room to spare.
"""

from __future__ import annotations

import http.client
import json
import multiprocessing as mp
import os
import statistics
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any


def multipart(
    images: list[tuple[str, bytes]], fields: dict[str, str] | None = None, field_name: str = "images"
) -> tuple[bytes, str]:
    """(body, content type) of a multipart/form-data request: one file part per image, then plain fields."""
    boundary = uuid.uuid4().hex
    parts = []
    for filename, data in images:
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field_name}"; filename="{filename}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        )
        parts.append(head.encode() + data + b"\r\n")
    for name, value in (fields or {}).items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


@dataclass
class Request:
    """A prepared request: what to send and, optionally, how to judge the answer."""

    path: str
    body: bytes
    content_type: str
    images: int = 1
    expect_status: int = 200
    expect_label: str = ""  # the label the first answer of the JSON response must carry


@dataclass
class Result:
    latencies: list[float] = field(default_factory=list)  # seconds, successful requests only
    statuses: dict[int, int] = field(default_factory=dict)
    wrong: int = 0  # answers with another status than expected, or without the expected content
    images: int = 0
    seconds: float = 0.0
    client_cpu_seconds: float = 0.0
    connection_errors: int = 0
    # (start, end, status) of every counted request, perf_counter seconds (system-wide on Linux, so
    # comparable across the client processes); status -1 is a broken connection
    timeline: list[tuple[float, float, int]] = field(default_factory=list)

    def merge(self, other: Result) -> None:
        self.latencies += other.latencies
        for k, v in other.statuses.items():
            self.statuses[k] = self.statuses.get(k, 0) + v
        self.wrong += other.wrong
        self.images += other.images
        self.client_cpu_seconds += other.client_cpu_seconds
        self.connection_errors += other.connection_errors
        self.timeline += other.timeline

    def summary(self) -> dict[str, Any]:
        lat = sorted(self.latencies)
        answered = sum(self.statuses.values())

        def pct(p: float) -> float | None:
            return round(lat[min(len(lat) - 1, int(p * len(lat)))] * 1000, 2) if lat else None

        return {
            "requests": answered,
            "requests_per_s": round(answered / self.seconds, 1) if self.seconds else 0.0,
            "images_per_s": round(self.images / self.seconds, 1) if self.seconds else 0.0,
            "p50_ms": pct(0.50), "p90_ms": pct(0.90), "p99_ms": pct(0.99),
            "max_ms": round(lat[-1] * 1000, 2) if lat else None,
            "mean_ms": round(statistics.mean(lat) * 1000, 2) if lat else None,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "errors": self.wrong + self.connection_errors,
            "wrong_answers": self.wrong,
            "connection_errors": self.connection_errors,
            "client_cpu_s": round(self.client_cpu_seconds, 2),
            "client_cpu_share": round(self.client_cpu_seconds / self.seconds, 3) if self.seconds else 0.0,
            "seconds": round(self.seconds, 2),
        }  # fmt: skip


def _send(conn: http.client.HTTPConnection, req: Request) -> tuple[int, bytes]:
    conn.request("POST", req.path, body=req.body, headers={"Content-Type": req.content_type})
    response = conn.getresponse()
    return response.status, response.read()


def _judge(result: Result, req: Request, status: int, body: bytes, latency: float, record: bool) -> None:
    if not record:
        return
    result.statuses[status] = result.statuses.get(status, 0) + 1
    end = time.perf_counter()
    result.timeline.append((end - latency, end, status))
    if status != req.expect_status or (req.expect_label and _label(body) != req.expect_label):
        result.wrong += 1
        return
    if status == 200:
        result.latencies.append(latency)
        result.images += req.images


def _label(body: bytes) -> str | None:
    try:
        return json.loads(body)[0]["label"]
    except (ValueError, LookupError, TypeError):
        return None


def _client(host: str, port: int, requests: list[Request], offset: int, t_record: float, t_end: float,
            result: Result, lock: threading.Lock) -> None:  # fmt: skip
    """One closed-loop client. An answer counts when it arrives inside [t_record, t_end], so a window
    shorter than one round trip under heavy load still counts what was answered in it."""
    mine = Result()
    conn = http.client.HTTPConnection(host, port, timeout=300)
    i = offset
    while time.perf_counter() < t_end:
        req = requests[i % len(requests)]
        i += 1
        start = time.perf_counter()
        try:
            status, body = _send(conn, req)
        except (OSError, http.client.HTTPException):
            if t_record <= time.perf_counter() <= t_end:
                mine.connection_errors += 1
                mine.timeline.append((start, time.perf_counter(), -1))
            conn.close()
            conn = http.client.HTTPConnection(host, port, timeout=300)
            time.sleep(0.01)
            continue
        end = time.perf_counter()
        _judge(mine, req, status, body, end - start, t_record <= end <= t_end)
    conn.close()
    with lock:
        result.merge(mine)


def _open_loop_sender(host: str, port: int, requests: list[Request], due: list[float], t_record: float,
                      result: Result, lock: threading.Lock) -> None:  # fmt: skip
    """One connection working through its share of due times; latency counts from the due time."""
    mine = Result()
    conn = http.client.HTTPConnection(host, port, timeout=120)
    for n, t_due in enumerate(due):
        wait = t_due - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        req = requests[n % len(requests)]
        try:
            status, body = _send(conn, req)
        except (OSError, http.client.HTTPException):
            if t_due >= t_record:
                mine.connection_errors += 1
                mine.timeline.append((t_due, time.perf_counter(), -1))
            conn.close()
            conn = http.client.HTTPConnection(host, port, timeout=120)
            continue
        _judge(mine, req, status, body, time.perf_counter() - t_due, t_due >= t_record)
    conn.close()
    with lock:
        result.merge(mine)


def _process(kind: str, host: str, port: int, requests: list[Request], threads: int, index: int, processes: int,
             t0: float, warmup: float, duration: float, rate: float, queue: mp.Queue) -> None:  # fmt: skip
    result, lock = Result(), threading.Lock()
    cpu0 = time.process_time()
    t_record, t_end = t0 + warmup, t0 + warmup + duration
    workers = []
    if kind == "closed":
        for k in range(threads):
            offset = (index * threads + k) * 7
            workers.append(threading.Thread(target=_client, args=(host, port, requests, offset, t_record, t_end,
                                                                  result, lock)))  # fmt: skip
    else:  # this process sends every processes-th request of the schedule, spread over its threads
        interval = 1.0 / rate
        total = int((warmup + duration) * rate)
        mine = [t0 + n * interval for n in range(index, total, processes)]
        for k in range(threads):
            workers.append(
                threading.Thread(
                    target=_open_loop_sender, args=(host, port, requests, mine[k::threads], t_record, result, lock)
                )
            )
    while time.perf_counter() < t0:
        time.sleep(0.001)
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    result.client_cpu_seconds = time.process_time() - cpu0
    queue.put(result)


def run(url: str, requests: list[Request], *, concurrency: int = 0, rate: float = 0.0, duration: float = 10.0,
        warmup: float = 2.0, processes: int = 2, timeline: bool = False) -> dict[str, Any]:  # fmt: skip
    """Closed loop with `concurrency` clients, or open loop at `rate` requests/s; returns `Result.summary()`,
    plus every request's (start, end, status) when `timeline` is asked for."""
    host, port = url.removeprefix("http://").split(":")
    kind = "closed" if concurrency else "open"
    if kind == "closed":
        processes = min(processes, concurrency)
        per = [concurrency // processes + (i < concurrency % processes) for i in range(processes)]
    else:  # enough connections that a slow answer does not delay the next due request much
        per = [max(2, int(rate * 0.05) // processes + 2)] * processes
    ctx = mp.get_context("fork")
    queue: mp.Queue = ctx.Queue()
    t0 = time.perf_counter() + 0.5  # perf_counter is system-wide (CLOCK_MONOTONIC) on Linux: shared by forks
    procs = [ctx.Process(target=_process, args=(kind, host, int(port), requests, per[i], i, processes, t0, warmup,
                                                duration, rate, queue)) for i in range(processes)]  # fmt: skip
    for p in procs:
        p.start()
    total = Result()
    for _ in procs:
        total.merge(queue.get())
    for p in procs:
        p.join()
    total.seconds = duration
    out = total.summary()
    out.update(mode=kind, concurrency=concurrency or None, rate=rate or None, client_processes=processes)
    if timeline:
        out["timeline"] = sorted(total.timeline)
    return out


def cpu_count() -> int:
    return len(os.sched_getaffinity(0))
