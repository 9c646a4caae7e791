"""API keys: with serving.yaml `auth: {api_keys_file: PATH}`, a request needs a key the file holds.

    KEY=$(openssl rand -hex 32); echo "$KEY" >> api-keys          # one key a line; '#' comments, blank lines
    curl -H "Authorization: Bearer $KEY" -F images=@digit.png http://localhost:3000/classify
    curl -H "X-API-Key: $KEY" -F images=@digit.png http://localhost:3000/classify
    python -c "from service.client import Client; print(Client('http://localhost:3000', key='$KEY').models())"

`KeysMiddleware` is an ASGI middleware the service adds around BentoML's whole app (`Service.add_asgi_middleware`:
BentoML's own routes are guarded too), so a request without a valid key is answered 401 from its headers alone: the
body of a stranger's upload is never read, parsed or decoded.
Closed by default: every path but the health checks (/livez, /healthz, /readyz) needs a key, so a route BentoML
adds later, or a path spelt another way ("/classify/"), is closed too; /metrics and the docs (/, /docs.json,
/schema.json, /static_content/) are open unless `protect_metrics` / `protect_docs` (service/config.py, `Auth`,
says why both default to open).

Keys are compared as SHA-256 digests with `hmac.compare_digest` against every key, so neither the time taken nor
an early exit tells a guess's length or which key came close. No key is logged or echoed: a refusal names only
which header to send. The file is stat()ed on each protected request (with the digests, a small part of a
request's cost: docs/serving.md, 'API keys') and read again when its inode, size,
mtime or ctime changes: Kubernetes updates a mounted Secret by swapping a symlink to a new file (not with a
subPath mount, which it never updates). A file that is missing, unreadable or empty after start-up lets no key
in until it is fixed (a WARNING line says so); at start-up `bentoml serve` refuses it with one line.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import typing as t
from pathlib import Path

from starlette.responses import JSONResponse

from core.errors import exit_with
from service.config import Auth
from service.http.bodies import has_body

logger = logging.getLogger("service")

HEALTH = frozenset({"/livez", "/healthz", "/readyz"})
METRICS = frozenset({"/metrics"})
DOCS = frozenset({"/", "/docs.json", "/schema.json"})
DOCS_PREFIXES = ("/static_content/",)  # the Swagger page's scripts and styles
HOW = "send the header 'Authorization: Bearer KEY' or 'X-API-Key: KEY'"


class KeysError(Exception):
    """The keys file cannot be used: missing, unreadable, not UTF-8, or without a key."""


def read_keys(path: str | Path) -> list[str]:
    """The keys in `path`: one a line, surrounding whitespace stripped; blank lines and `#` comments skipped."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise KeysError(f"auth.api_keys_file {path} does not exist; write one API key a line there") from None
    except (OSError, UnicodeDecodeError) as e:
        raise KeysError(f"auth.api_keys_file {path} cannot be read ({type(e).__name__}: {e})") from None
    keys = [line.strip() for line in text.splitlines()]
    keys = [key for key in keys if key and not key.startswith("#")]
    if not keys:
        raise KeysError(f"auth.api_keys_file {path} holds no key; write one API key a line there")
    return keys


def _digest(key: bytes) -> bytes:
    return hashlib.sha256(key).digest()


class Keys:
    """The keys of one file, read again when the file changes."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._digests: tuple[bytes, ...] = ()
        self._seen: object = None  # the file's identity when last read: `_identity`; None before the first read

    def _identity(self) -> tuple[int, ...] | str:
        try:
            st = os.stat(self.path)  # follows the symlink a Kubernetes Secret mount swaps
        except OSError as e:
            return type(e).__name__
        # ctime too: a chmod that makes an unreadable file readable changes only that
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def refresh(self) -> None:
        """Read the file if it changed since it was last read; on a failure, let no key in and say why (once)."""
        seen = self._identity()
        if seen == self._seen:
            return
        self._seen = seen
        try:
            keys = read_keys(self.path)
        except KeysError as e:
            self._digests = ()
            logger.warning("%s: every request that needs a key is refused until it is fixed", e)
            return
        self._digests = tuple(_digest(k.encode()) for k in keys)
        logger.info("read %d API key%s from %s", len(keys), "" if len(keys) == 1 else "s", self.path)

    def accepts(self, presented: t.Iterable[bytes]) -> bool:
        """Whether any presented key is one of the file's, compared in constant time against every key."""
        self.refresh()
        found = False
        for key in presented:
            digest = _digest(key)
            for known in self._digests:  # no early exit: the time does not depend on which key matched
                found |= hmac.compare_digest(digest, known)
        return found


def presented(headers: t.Iterable[tuple[bytes, bytes]]) -> list[bytes]:
    """The keys a request's raw ASGI headers carry: `Authorization: Bearer KEY` and `X-API-Key: KEY`."""
    out = []
    for name, value in headers:
        if name == b"authorization":
            scheme, _, key = value.strip().partition(b" ")
            if scheme.lower() == b"bearer" and key.strip():
                out.append(key.strip())
        elif name == b"x-api-key" and value.strip():
            out.append(value.strip())
    return out


def open_paths(auth: Auth) -> tuple[frozenset[str], tuple[str, ...]]:
    """The paths (exact, and by prefix) that need no key."""
    paths, prefixes = set(HEALTH), ()
    if not auth.protect_metrics:
        paths |= METRICS
    if not auth.protect_docs:
        paths |= DOCS
        prefixes = DOCS_PREFIXES
    return frozenset(paths), prefixes


class KeysMiddleware:
    """Answers 401 in the service's error body, from the headers alone, to a request without a valid key."""

    def __init__(self, app: t.Any, auth: Auth, keys: Keys) -> None:
        self.app = app
        self.keys = keys
        self.open_exact, self.open_prefixes = open_paths(auth)

    async def __call__(self, scope: dict, receive: t.Callable, send: t.Callable) -> None:
        # OPTIONS too: a browser's CORS preflight carries no key, and no route of the service answers it
        if scope["type"] != "http" or scope["method"] == "OPTIONS" or self.is_open(scope["path"]):
            return await self.app(scope, receive, send)
        keys = presented(scope["headers"])
        if keys and self.keys.accepts(keys):
            return await self.app(scope, receive, send)
        if keys:
            message, challenge = f"invalid API key; {HOW} with a key of auth.api_keys_file", ', error="invalid_token"'
        else:
            message, challenge = f"no API key: {HOW}", ""
        logger.info("refused with 401: %s %s: %s", scope["method"], scope["path"], "invalid key" if keys else "no key")
        headers = {"WWW-Authenticate": f'Bearer realm="classifier"{challenge}'}
        if has_body(scope["headers"]):
            # the body is never read: left on the connection, it would be read as the next request's start (or keep
            # the connection open for ever, waiting for bytes the client will not send)
            headers["Connection"] = "close"
        await JSONResponse({"error": message}, status_code=401, headers=headers)(scope, receive, send)

    def is_open(self, path: str) -> bool:
        return path in self.open_exact or path.startswith(self.open_prefixes)


def keys_or_exit(auth: Auth, starting: bool) -> Keys:
    """The keys of `auth.api_keys_file`. Where `bentoml serve` starts (`starting`), a file that cannot be used is
    one line on stderr and exit status 2; elsewhere (its workers) it lets no key in and logs why."""
    keys = Keys(auth.api_keys_file)
    if starting:
        try:
            read_keys(keys.path)
        except KeysError as e:
            exit_with(f"serving config: {e}")
    keys.refresh()
    return keys
