"""tests/test_bulk.py in a pytest process of its own, so that Ray's threads never share a process with the rest
of the suite (see that module's docstring for what they broke)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT


@pytest.mark.slow
def test_bulk_classification_on_ray_in_its_own_process():
    if importlib.util.find_spec("ray") is None:  # found, not imported: no Ray in this process
        pytest.skip("the bulk extra (pip install -e '.[bulk]') is not installed")
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_bulk.py"],
                            cwd=ROOT, env={**os.environ, "IMGCLF_BULK_TESTS": "1"}, capture_output=True, text=True,
                            timeout=1200)  # fmt: skip
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and " skipped" not in result.stdout, result.stdout[-2000:]
