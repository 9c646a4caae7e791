"""The steps of `make demo` that decide whether there is anything to do, each answering in one line.

    python -m deploy.demo trained runs/digits-resnet18        # exit 0: best.pt is there, reuse it
    python -m deploy.demo stored digits-resnet18 runs/digits-resnet18/best.pt   # exit 0: the store has it
    python -m deploy.demo port 3000                           # exit 1 with one line: the port is taken

A second `make demo` then reuses the run and the stored model instead of training again and storing another
version, and refuses a port another server holds before `bentoml serve` fails on it with a traceback.
"""

from __future__ import annotations

import argparse
import socket
import sys
from pathlib import Path

from core import metadata
from core.errors import say_error

REUSE, DO_IT, REFUSE = 0, 1, 2


def trained(run: Path) -> int:
    """A finished run (summary.json is written last) is reused; an interrupted one is trained again."""
    if (run / "summary.json").is_file() and (run / "best.pt").is_file():
        print(f"reusing {run / 'best.pt'} (remove {run} to train again)")
        return REUSE
    return DO_IT


def stored(name: str, checkpoint: Path) -> int:
    """Whether the store's latest `name` was exported from `checkpoint` (by its source_sha256)."""
    import bentoml
    from bentoml.exceptions import NotFound

    if not checkpoint.is_file():
        return DO_IT
    try:
        entry = bentoml.models.get(f"{name}:latest")
    except NotFound:
        return DO_IT
    source = entry.info.metadata.get("source_sha256")
    if source != metadata.sha256_of(checkpoint):
        return DO_IT
    print(f"reusing {entry.tag} in the model store, exported from {checkpoint} "
          "(bentoml models delete it to export again)")  # fmt: skip
    return REUSE


def port_free(port: int) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # as the server will: a port whose last server just stopped (connections in TIME_WAIT) is free
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            say_error(f"port {port} is in use (a server from an earlier make demo?); stop it, or serve on another "
                      f"port: make demo PORT={port + 1}")  # fmt: skip
            return REFUSE
    return REUSE


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.demo", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="step", required=True)
    sub.add_parser("trained").add_argument("run", type=Path)
    store = sub.add_parser("stored")
    store.add_argument("name")
    store.add_argument("checkpoint", type=Path)
    sub.add_parser("port").add_argument("port", type=int)
    args = parser.parse_args(argv)
    if args.step == "trained":
        return trained(args.run)
    if args.step == "stored":
        return stored(args.name, args.checkpoint)
    return port_free(args.port)


if __name__ == "__main__":
    sys.exit(main())
