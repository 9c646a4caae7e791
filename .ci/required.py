#!/usr/bin/env python3
"""Fail unless every test that .ci/required lists ran and passed.

Those tests prove a claim of README.md or docs/ and skip where a machine lacks what they need (a Docker daemon,
kubectl, Ray): a green run in which one skipped would hide the claim. This reads the JUnit XML that each pytest
step of .ci/run wrote (`--junitxml`), prints one line for each listed test that did not run, skipped or failed,
and exits 1; otherwise one line saying all ran.

    .venv/bin/python .ci/required.py RESULTS/make-test.xml RESULTS/container.xml
"""

from __future__ import annotations

import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

LIST = Path(__file__).resolve().parent / "required"


def required(path: Path = LIST) -> dict[str, str]:
    """Node id -> the claim it proves, from lines `NODE_ID  # claim` (blank and `#` lines ignored)."""
    out = {}
    for line in path.read_text().splitlines():
        node, _, claim = line.partition("#")
        if node.strip():
            out[node.strip()] = claim.strip()
    return out


def junit_name(node: str) -> str:
    """A node id as pytest's JUnit XML names its testcase, `classname::name` (tests/a.py::C::t[x] -> tests.a.C::t[x]),
    the way _pytest/junitxml.py's mangle_test_address does."""
    path, bracket, params = node.partition("[")
    names = path.split("::")
    names[0] = re.sub(r"\.py$", "", names[0].replace("/", "."))
    return f"{'.'.join(names[:-1])}::{names[-1]}{bracket}{params}"


def outcomes(files: list[Path]) -> dict[str, list[str]]:
    """`classname::name` -> each outcome it had in `files`: "passed", "skipped: REASON" or "failed"."""
    out: dict[str, list[str]] = {}
    for file in files:
        if not file.is_file():
            print(f"required: no test results at {file} (its pytest step did not finish)")
            continue
        for case in ET.parse(file).iter("testcase"):
            tags = {child.tag: child for child in case}
            if "failure" in tags or "error" in tags:
                outcome = "failed"
            elif "skipped" in tags:
                outcome = f"skipped: {tags['skipped'].get('message', '')}"
            else:
                outcome = "passed"
            out.setdefault(f"{case.get('classname')}::{case.get('name')}", []).append(outcome)
    return out


def main(files: list[str]) -> int:
    wanted, seen = required(), outcomes([Path(f) for f in files])
    missing = []
    for node, claim in wanted.items():
        got = seen.get(junit_name(node), [])
        if "passed" in got and all(o == "passed" for o in got):
            continue
        why = next((o for o in got if o != "passed"), "did not run")
        missing.append(node)
        print(f"required test {node} {why} (it proves: {claim})")
    if missing:
        print(f"required: {len(missing)} of the {len(wanted)} tests in .ci/required did not run and pass")
        return 1
    print(f"required: all {len(wanted)} tests in .ci/required ran and passed")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
