"""A busy port stops `bentoml serve` with one line, before BentoML fails on it with a 54-line traceback.

`bentoml serve` imports the service (bentoml_cli/serve.py, `load`) before `serve_http` binds the port
(_bentoml_impl/server/serving.py: the CircusSocket is bound when the arbiter starts), and BentoML has no hook
between the two. So at import, in the `bentoml serve` process only (the workers are `python -m
_bentoml_impl.worker.service` and get the bound socket), `check()` works out the port and host that command
will bind the way BentoML does: the `serve` command's own `--port`/`--host` (or BENTOML_PORT/BENTOML_HOST),
parsed by BentoML's click command itself, else BentoML's configuration (`http.port`, `http.host`: 3000 and
0.0.0.0 unless a BENTOML_CONFIG file says otherwise), and binds it once as circus will (SO_REUSEADDR).
The port can still be taken between this check and BentoML's bind; then BentoML's own error stands.

Relies on bentoml_cli's `serve` command and BentoML's configuration container (checked against bentoml 1.4.40).
Guard: `address()`; if what it reads moves, the check is skipped with a log line rather than stopping a server
that would start (service/patches.py lists it with the other workarounds). It can go when BentoML reports a busy port
in one line itself.
"""

from __future__ import annotations

import logging
import socket
import sys
from pathlib import Path

logger = logging.getLogger("service")


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


def address(args: list[str]) -> tuple[str, int]:
    """The host and port `bentoml serve ARGS` binds."""
    from bentoml._internal.configuration.containers import BentoMLContainer
    from bentoml_cli.cli import cli

    params = cli.commands["serve"].make_context("serve", list(args), resilient_parsing=True).params
    host = params.get("host") or BentoMLContainer.http.host.get()
    port = params.get("port") or BentoMLContainer.http.port.get()
    return str(host), int(port)


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
    args = command[1]
    try:
        host, port = address(args)
    except Exception as e:  # noqa: BLE001 - BentoML's CLI changed: let BentoML bind and report as it does
        logger.warning("service/port.py: cannot tell which port bentoml serve binds (%s); not checking it", e)
        return
    if in_use(host, port):
        print(f"error: port {port} is in use on {host} (another server?); stop it, or serve on another port: "
              f"bentoml serve --port {port + 1}", file=sys.stderr)  # fmt: skip
        raise SystemExit(2)
    if host in ("0.0.0.0", "::"):
        # BentoML's start-up line says http://localhost:PORT for every address (serving.py, `log_host`), and the
        # `bentoml serve` process has no logging handler for this package yet: a plain line on stderr
        print(f"listening on every address ({host} port {port}): http://localhost:{port} on this machine, "
              f"http://{socket.gethostname()}:{port} from others; --host 127.0.0.1 for this machine only",
              file=sys.stderr)  # fmt: skip
