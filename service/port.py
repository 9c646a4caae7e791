"""A busy port stops `bentoml serve` with one line, before BentoML fails on it with a 54-line traceback.

`bentoml serve` imports the service before it binds the port, and BentoML has no hook between the two. So at
import, in the `bentoml serve` process only (its workers get the bound socket), `check()` works out the port and host
that command will bind from what `bentoml serve --help` documents: `--port`/`-p` and `--host`, or BENTOML_PORT and
BENTOML_HOST, else 3000 on every address; and binds it once as BentoML will (SO_REUSEADDR). Where a BENTOML_CONFIG
file may name another port, it does not guess: BentoML's own error stands. So does it where the port is taken
between this check and BentoML's bind. Only BentoML's documented command line is read: nothing here to guard.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from pathlib import Path

from core.errors import exit_with

DEFAULT_HOST, DEFAULT_PORT = "0.0.0.0", 3000  # `bentoml serve --help`


def bentoml_command(argv: list[str] | None = None) -> tuple[str, list[str]] | None:
    """(command, its arguments) when `argv` (default sys.argv) is a `bentoml serve` or `bentoml build` command
    line: the processes that import the service to serve or pack it, as opposed to its workers (`python -m
    _bentoml_impl.worker.service`) and to a plain `import service.service`. None otherwise."""
    argv = sys.argv if argv is None else argv
    program = Path(argv[0]) if argv else Path()
    is_bentoml = program.name == "bentoml" or program.parts[-2:] == ("bentoml", "__main__.py")
    if is_bentoml and argv[1:2] in (["serve"], ["build"]):
        return argv[1], argv[2:]
    return None


def address(args: list[str]) -> tuple[str, int] | None:
    """The host and port `bentoml serve ARGS` binds, or None where a BENTOML_CONFIG file may say otherwise."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False, exit_on_error=False)
    parser.add_argument("-p", "--port", type=int, default=os.environ.get("BENTOML_PORT", DEFAULT_PORT))
    parser.add_argument("--host", default=os.environ.get("BENTOML_HOST", DEFAULT_HOST))
    known, _ = parser.parse_known_args(args)
    if os.environ.get("BENTOML_CONFIG") and not ({"-p", "--port"} & {a.split("=")[0] for a in args}):
        return None
    return str(known.host), int(known.port)


def in_use(host: str, port: int) -> bool:
    """Whether binding (host, port) fails, as circus binds it: a port whose last server just stopped
    (connections in TIME_WAIT) is free."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def check(argv: list[str] | None = None) -> None:
    """In the `bentoml serve` process: a port in use is one line on stderr and exit status 2."""
    command = bentoml_command(argv)
    if command is None or command[0] != "serve":
        return
    try:
        found = address(command[1])
    except (argparse.ArgumentError, ValueError):  # a value it cannot read: BentoML's own parser says what is wrong
        return
    if found is None:
        return
    host, port = found
    if in_use(host, port):
        exit_with(
            f"port {port} is in use on {host} (another server?); stop it, or serve on another port: "
            f"bentoml serve --port {port + 1}"
        )
    if host in ("0.0.0.0", "::"):
        # BentoML's start-up line says http://localhost:PORT for every address (serving.py, `log_host`), and the
        # `bentoml serve` process has no logging handler for this package yet: a plain line on stderr
        print(f"listening on every address ({host} port {port}): http://localhost:{port} on this machine, "
              f"http://{socket.gethostname()}:{port} from others; --host 127.0.0.1 for this machine only",
              file=sys.stderr)  # fmt: skip
