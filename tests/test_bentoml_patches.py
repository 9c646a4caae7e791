"""The start-up guards of the service's patches of BentoML internals (service/patches.py).

Each guard passes on the installed bentoml and fires, naming the patch and the bentoml version, when the
internal it relies on is altered in this process the way an upgrade could alter it. Torch-free.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from importlib import metadata

import pytest
from bentoml._internal.server import base_app
from bentoml._internal.server.http import traffic
from starlette.middleware import Middleware

from service import timeout
from service.patches import PatchMismatch
from tests.conftest import ROOT

VERSION = metadata.version("bentoml")


def test_the_installed_bentoml_has_what_the_timeout_patch_relies_on():
    timeout.check()


def test_the_timeout_guard_fires_when_the_middleware_changes(monkeypatch):
    with monkeypatch.context() as m:
        m.delattr(traffic.TimeoutMiddleware, "_set_timer_out")
        with pytest.raises(PatchMismatch, match=rf"^service/timeout.py .* bentoml {VERSION} .*_set_timer_out"):
            timeout.check()
    with monkeypatch.context() as m:  # the waiter fails with something the replacement does not catch
        m.setattr(traffic.TimeoutMiddleware, "_set_timer_out", lambda self, w: w.set_exception(asyncio.CancelledError))
        with pytest.raises(PatchMismatch, match="does not fail the waiter with TimeoutError"):
            timeout.check()
    with monkeypatch.context() as m:  # the app factory builds its timeout from another class
        other = type("TimeoutMiddleware", (), {})
        m.setattr(base_app.BaseAppFactory, "middlewares", property(lambda self: [Middleware(other, timeout=7)]))
        with pytest.raises(PatchMismatch, match="BaseAppFactory.middlewares adds .*, not TimeoutMiddleware"):
            timeout.check()
    timeout.check()  # the real middleware again


@pytest.mark.parametrize(
    ("alteration", "patch"),
    [
        ("from bentoml._internal.server.http import traffic; del traffic.TimeoutMiddleware._set_timer_out; "
         "from service import timeout; timeout.install()", "service/timeout.py"),
    ],
)  # fmt: skip
def test_a_mismatch_stops_start_up_with_one_line(alteration, patch):
    result = subprocess.run([sys.executable, "-c", alteration], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {patch} relies on bentoml internals"), result.stderr
    assert f"bentoml {VERSION} does not have" in lines[0] and "Traceback" not in result.stderr
