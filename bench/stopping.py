"""What clients see when a worker is told to stop under load: answers, clean closes and resets, counted per client.

    python -m bench.stopping [--work runs/attacks] [--clients 32] [--idle 4] [--load-after-readyz 3 15]

Starts `bentoml serve` (one worker, the default connection settings) on the digits-sized model of `bench.serve_load`,
then, for each value of --load-after-readyz: `--clients` threads post a 32x32 PNG in a loop, each on a kept-alive
connection (a new one after an answer that says `Connection: close`, or after an error), and `--idle` clients each
send one request and then hold their connection open without sending. SIGTERM goes to the server; the load clients
go on for that many seconds after /readyz first answers 503 (a load balancer's delay in taking the worker out: 3 s is
prompt, 15 s is past `connections.drain_s`, so the drain ends with requests still coming), then stop. For the load:
answers by status, resets (ECONNRESET or EPIPE on a connection the server had accepted), connections refused once
the listener closed, and requests with no answer (the connection closed cleanly before it); for the idle clients
how their connections ended (a clean close, a reset, or still open when the server exited); and the time from
SIGTERM to the server's exit. Writes bench/results/stopping.{json,md}.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import signal
import socket
import threading
import time
from collections import Counter
from typing import Any

import numpy as np
from PIL import Image

from bench import loadgen
from bench.common import cli, write_report
from bench.serve_load import ROOT, SERVE, prepare_models, server, store_env
from service.config import Connections


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.stopping", description=__doc__.split("\n")[0])
    p.add_argument("--work", default="runs/attacks")
    p.add_argument("--out", default="bench/results/stopping")
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--idle", type=int, default=4)
    p.add_argument("--load-after-readyz", type=float, nargs="+", default=[3.0, 15.0],
                   help="seconds the load goes on after /readyz first answers 503, one stop each")  # fmt: skip
    return p.parse_args(argv)


def _body(png: bytes) -> tuple[bytes, dict[str, str]]:
    body, content_type = loadgen.multipart([("n.png", png)])
    return body, {"Content-Type": content_type}


def _load(host: str, port: int, png: bytes, stop: threading.Event, counts: Counter, lock: threading.Lock) -> None:
    """One client posting in a loop on a kept-alive connection until `stop` (or the server is gone)."""
    body, headers = _body(png)
    conn: http.client.HTTPConnection | None = None
    while not stop.is_set():
        if conn is None:
            conn = http.client.HTTPConnection(host, port, timeout=30)
            try:
                conn.connect()
            except ConnectionRefusedError:
                with lock:
                    counts["refused (listener closed)"] += 1
                conn = None
                stop.wait(0.05)
                continue
        try:
            conn.request("POST", "/classify", body, headers)
            answer = conn.getresponse()
            answer.read()
            with lock:
                counts[f"answered {answer.status}"] += 1
            if answer.will_close:
                conn.close()
                conn = None
        except (ConnectionResetError, BrokenPipeError):
            with lock:
                counts["reset"] += 1
            conn.close()
            conn = None
        except http.client.RemoteDisconnected:  # closed cleanly before an answer: the request was not taken
            with lock:
                counts["closed before an answer"] += 1
            conn.close()
            conn = None
        except (TimeoutError, OSError) as e:
            with lock:
                counts[f"other: {type(e).__name__}"] += 1
            conn.close()
            conn = None
    if conn is not None:
        conn.close()


def _idle(host: str, port: int, png: bytes, outcome: list[str], ready: threading.Event) -> None:
    """One request, then the connection held without sending: how does it end?"""
    body, headers = _body(png)
    sock = socket.create_connection((host, port), timeout=120)
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    sock.sendall(f"POST /classify HTTP/1.1\r\nHost: {host}\r\n{head}Content-Length: {len(body)}\r\n\r\n".encode()
                 + body)  # fmt: skip
    answer = b""
    while b"\r\n\r\n" not in answer:
        answer += sock.recv(65536)
    ready.set()
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                outcome.append("closed cleanly")
                break
    except ConnectionResetError:
        outcome.append("reset")
    except TimeoutError:
        outcome.append("still open")
    finally:
        sock.close()


def stop_under_load(env: dict, serving: Any, log: Any, args: argparse.Namespace, after_readyz: float) -> dict:
    import httpx

    out = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(out, "PNG")
    png = out.getvalue()
    with server(SERVE, {**env, "SERVING_CONFIG": str(serving)}, log, "/readyz") as (url, proc):
        host, port = url.removeprefix("http://").split(":")
        counts: Counter = Counter()
        lock, stop = threading.Lock(), threading.Event()
        idle: list[str] = []
        idle_ready = [threading.Event() for _ in range(args.idle)]
        threads = [threading.Thread(target=_idle, args=(host, int(port), png, idle, r), daemon=True)
                   for r in idle_ready]  # fmt: skip
        threads += [threading.Thread(target=_load, args=(host, int(port), png, stop, counts, lock), daemon=True)
                    for _ in range(args.clients)]  # fmt: skip
        for t in threads:
            t.start()
        for r in idle_ready:
            r.wait(60)
        time.sleep(2.0)  # the load under way
        with lock:
            before = dict(counts)
        signalled = time.monotonic()
        # the arbiter: BentoML passes SIGTERM on to its workers, as `kubectl delete pod` does
        proc.send_signal(signal.SIGTERM)
        readyz_503 = None
        while readyz_503 is None and proc.poll() is None and time.monotonic() - signalled < 30:
            try:
                if httpx.get(f"{url}/readyz", timeout=5).status_code == 503:
                    readyz_503 = round(time.monotonic() - signalled, 3)
            except httpx.HTTPError:
                break
            time.sleep(0.02)
        deadline = time.monotonic() + after_readyz
        while time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        load_stopped = time.monotonic() - signalled
        stop.set()
        proc.wait(120)
        exited = time.monotonic() - signalled
        for t in threads:
            t.join(10)
        while len(idle) < args.idle:
            idle.append("still open")
    during = {k: v - before.get(k, 0) for k, v in counts.items() if v - before.get(k, 0)}
    return {"load_after_readyz_s": after_readyz, "readyz_503_after_s": readyz_503, "load_stopped_after_s":
            round(load_stopped, 2), "exited_after_s": round(exited, 2), "load_before_sigterm": before,
            "load_after_sigterm": during, "idle": dict(Counter(idle))}  # fmt: skip


def run(args: argparse.Namespace) -> None:
    work, env = store_env(args.work)
    prepare_models(["digits"], work)
    serving = work / "serving-stopping.yaml"
    serving.write_text("default_model: digits\nmodels: [digits]\nworkers: 1\n")
    rows = []
    for after in args.load_after_readyz:
        row = stop_under_load(env, serving, work / f"serve-stopping-{after:g}.log", args, after)
        rows.append(row)
        print(json.dumps(row), flush=True)
    settings = Connections()
    report = {"clients": args.clients, "idle_clients": args.idle, "drain_s": settings.drain_s, "rows": rows}
    lines = [f"# Stopping under load\n\nOne worker, digits model, {args.clients} load clients (32x32 PNG, kept-alive "
             f"connections) and {args.idle} idle kept-alive clients; SIGTERM to `bentoml serve`; connections.drain_s "
             f"{settings.drain_s:g}. Load after SIGTERM: what the load clients got from SIGTERM until they stopped.\n",
             "| load after /readyz 503 (s) | /readyz 503 after (s) | exited after (s) | load after SIGTERM | idle "
             "clients |", "|---:|---:|---:|---|---|"]  # fmt: skip
    for r in rows:
        load = ", ".join(f"{k} {v}" for k, v in sorted(r["load_after_sigterm"].items()))
        idle = ", ".join(f"{k} {v}" for k, v in sorted(r["idle"].items()))
        lines.append(f"| {r['load_after_readyz_s']:g} | {r['readyz_503_after_s']} | {r['exited_after_s']} | "
                     f"{load} | {idle} |")  # fmt: skip
    markdown = "\n".join(lines) + "\n"
    write_report(ROOT / args.out, report, markdown)
    print(markdown)


def main(argv: list[str] | None = None) -> int:
    return cli(run, _parse, argv)


if __name__ == "__main__":
    raise SystemExit(main())
