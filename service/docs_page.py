"""The Swagger page at / without what it loads from the internet: Google Tag Manager and the spec validator.

BentoML's page (bentoml 1.4.40: `_bentoml_impl/server/main-openapi.html`, which
`ServiceAppFactory.index_page` in `_bentoml_impl/server/app.py` serves at /) loads
`https://www.googletagmanager.com/gtm.js` in a script and `https://www.googletagmanager.com/ns.html` in an
iframe, telling Google of every visit. Its `swagger-initializer.js` (bentoml/_internal/server/static_content,
mounted at /static_content) leaves Swagger UI's `validatorUrl` at its default, so on any host but localhost the
page shows a badge image from `https://validator.swagger.io`, which is sent the URL of /docs.json. A served
page must load nothing from outside the server (in a cluster it may not reach the internet at all).

`PageMiddleware` answers GET / and GET /static_content/swagger-initializer.js with BentoML's own files, edited
once at start-up: the two Google Tag Manager blocks cut out, `validatorUrl: null` added. `check()` makes
those edits on the installed files and fails (service/patches.py: one line, exit 2) when one no longer applies
or the page still names an outside script, frame or stylesheet; the link to BentoML on GitHub stays (it loads
nothing until clicked). It can go when BentoML's page loads nothing from outside.
"""

from __future__ import annotations

import re
import typing as t
from pathlib import Path

import _bentoml_impl.server
from _bentoml_impl.server.app import ServiceAppFactory
from bentoml._internal import server as bentoml_server
from bentoml._internal.configuration.containers import BentoMLContainer
from starlette.responses import Response

from service import patches

PATCH = "service/docs_page.py"
INDEX = Path(_bentoml_impl.server.__file__).parent / "main-openapi.html"
INITIALIZER = Path(bentoml_server.__file__).parent / "static_content" / "swagger-initializer.js"
INITIALIZER_PATH = "/static_content/swagger-initializer.js"
# both blocks are bracketed by comments in the page: "<!-- Google Tag Manager -->" ... "<!-- End Google Tag
# Manager -->", and the same with "(noscript)"
TAG_MANAGER = re.compile(
    r"[ \t]*<!-- Google Tag Manager(| \(noscript\)) -->.*?<!-- End Google Tag Manager\1 -->\n?", re.S
)
# what a page loads by itself: src= of any element (script, iframe, img), href= of <link>, url() in styles
LOADS = re.compile(
    r"""\bsrc\s*=\s*["']?([^"'\s>]+)|<link\b[^>]*\bhref\s*=\s*["']?([^"'\s>]+)|url\(\s*["']?([^"')]+)""", re.I
)
SPEC_URL = 'url: "./docs.json",'


def outside(html: str) -> list[str]:
    """The URLs on another host that a page loads by itself (not links, which load only when clicked)."""
    found = [next(g for g in m.groups() if g) for m in LOADS.finditer(html)]
    text = re.sub(r"<!--.*?-->", "", html, flags=re.S)
    found += re.findall(r"https?://[^\s\"'<>]+", "".join(re.findall(r"<script\b[^>]*>(.*?)</script>", text, re.S)))
    return [url for url in found if re.match(r"(?i)(https?:)?//", url)]


def page() -> bytes:
    """BentoML's Swagger page without Google Tag Manager."""
    html = INDEX.read_text(encoding="utf-8")
    edited, cut = TAG_MANAGER.subn("", html)
    if cut != 2:
        raise patches.mismatch(PATCH, f"{INDEX.name} has {cut} Google Tag Manager blocks, not 2")
    if urls := outside(edited):
        raise patches.mismatch(PATCH, f"{INDEX.name} still loads {urls} from outside the server")
    return edited.encode()


def initializer() -> bytes:
    """BentoML's swagger-initializer.js with Swagger UI's online validator turned off."""
    script = INITIALIZER.read_text(encoding="utf-8")
    if script.count(SPEC_URL) != 1 or "validatorUrl" in script:
        raise patches.mismatch(PATCH, f"{INITIALIZER.name} no longer sets the spec URL as '{SPEC_URL}' once")
    return script.replace(SPEC_URL, f"{SPEC_URL}\n    validatorUrl: null,").encode()


@patches.checks(PATCH)
def check() -> None:
    """BentoML still serves main-openapi.html at / and the initializer under /static_content, and both edits apply."""
    names = ServiceAppFactory.index_page.__code__.co_consts + ServiceAppFactory.__call__.__code__.co_consts
    for name in (INDEX.name, "static_content"):
        if name not in names:
            raise patches.mismatch(PATCH, f"ServiceAppFactory no longer serves {name}")
    page()
    initializer()


class PageMiddleware:
    """Serves the edited page and initializer in place of BentoML's (an ASGI middleware: `add_asgi_middleware`)."""

    def __init__(self, app: t.Any) -> None:
        self.app = app
        # BentoML's other page (the "new_index" feature flag: main-ui.html) loads nothing from outside
        self.files = {
            "/": Response(page(), media_type="text/html; charset=utf-8"),
            INITIALIZER_PATH: Response(initializer(), media_type="text/javascript; charset=utf-8"),
        }
        if BentoMLContainer.new_index:
            self.files = {}

    async def __call__(self, scope: dict, receive: t.Callable, send: t.Callable) -> None:
        response = self.files.get(scope["path"]) if scope["type"] == "http" else None
        if response is None or scope["method"] != "GET":
            return await self.app(scope, receive, send)
        await response(scope, receive, send)


patches.guard(check)
