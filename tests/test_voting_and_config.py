"""Voting on hand-made probability tables, and serving.yaml validation (no server needed)."""

from __future__ import annotations

import numpy as np
import pytest

from core.voting import vote
from service.config import ConfigError, parse

# 3 members x 2 images x 3 classes
TABLE = np.array(
    [
        [[0.6, 0.3, 0.1], [0.2, 0.5, 0.3]],
        [[0.1, 0.8, 0.1], [0.3, 0.4, 0.3]],
        [[0.5, 0.4, 0.1], [0.1, 0.1, 0.8]],
    ]
)


def test_soft_voting_averages():
    v = vote(TABLE, "soft")
    assert np.allclose(v.scores, TABLE.mean(0))
    assert v.winner.tolist() == [1, 2]  # means (0.4, 0.5, 0.1) and (0.2, 0.333, 0.467)
    assert v.votes[0].tolist() == [2, 1, 0]
    assert v.agreement[0] == pytest.approx(1 / 3)  # only member 1 has class 1 on top
    assert v.order[1].tolist() == [2, 1, 0]


def test_weighted_voting_normalizes_weights():
    v = vote(TABLE, "weighted", np.array([3.0, 1.0, 1.0]))
    expected = (3 * TABLE[0] + TABLE[1] + TABLE[2]) / 5
    assert np.allclose(v.scores, expected)
    assert v.winner[0] == 0  # (0.48, 0.42, 0.1): the heavy member turns soft voting's answer around
    with pytest.raises(ValueError, match="needs 3 member weights"):
        vote(TABLE, "weighted", np.array([1.0]))


def test_hard_voting_majority_and_tie_break():
    v = vote(TABLE, "hard")
    assert v.winner[0] == 0  # two members say class 0, one says class 1, although the mean favours 1
    assert v.agreement[0] == pytest.approx(2 / 3)
    # image 1: one vote each for classes 1, 1, 2 -> class 1 wins 2 to 1
    assert v.winner[1] == 1 and v.votes[1].tolist() == [0, 2, 1]
    tie = np.array([[[0.9, 0.1, 0.0]], [[0.2, 0.7, 0.1]]])  # one vote each: the higher mean wins
    t = vote(tie, "hard")
    assert t.winner[0] == 0 and t.votes[0].tolist() == [1, 1, 0] and t.agreement[0] == 0.5
    assert t.order[0].tolist() == [0, 1, 2]
    exact = np.array([[[0.5, 0.5]], [[0.5, 0.5]]])  # a full tie falls to the lower index, every time
    assert vote(exact, "hard").winner[0] == 0 and vote(exact, "soft").winner[0] == 0


GOOD = {"models": ["a", "b:v1"], "default_model": "a", "ensembles": {"e": {"members": ["a", "b"], "voting": "hard"}}}


def test_config_parses_and_refuses_mistakes():
    cfg = parse(GOOD)
    assert cfg.models == ["a", "b:v1"] and cfg.ensembles["e"].members == ["a", "b"] and cfg.device == "auto"
    assert cfg.limits.max_images_per_request == 64 and cfg.batching.max_latency_ms == 1000
    assert cfg.batching.max_wait_ms == 10 and cfg.workers == 1
    assert parse({**GOOD, "workers": 2, "batching": {"max_wait_ms": 0}}).workers == 2
    for raw, message in [
        ({**GOOD, "default_model": "c"}, "default_model 'c' is not one of models"),
        ({**GOOD, "device": "tpu"}, "device must be auto, cpu or cuda"),
        ({**GOOD, "ensembles": {"e": {"members": ["a", "z"]}}}, "members \\['z'\\] must be served models"),
        ({**GOOD, "ensembles": {"e": {"members": ["a", "b"], "voting": "weighted"}}}, "has no weights"),
        ({**GOOD, "ensembles": {"e": {"members": ["a", "b"], "weights": [1]}}}, "weights must be 2 non-negative"),
        ({**GOOD, "limits": {"max_images": 3}}, "unknown serving.yaml key 'limits.max_images'"),
        ({**GOOD, "modelz": []}, "unknown serving.yaml key 'modelz': did you mean models\\?"),
        ({**GOOD, "batching": {"max_wait": 5}}, "key 'batching.max_wait': did you mean batching.max_wait_ms\\?"),
        ({**GOOD, "batching": {"max_batch_size": 0}}, "batching.max_batch_size must be a whole number of at least 1"),
        ({**GOOD, "workers": 0}, "workers must be a whole number of at least 1"),
        ({"models": []}, "at least one model"),
    ]:
        with pytest.raises(ConfigError, match=message):
            parse(raw)


def test_the_service_imports_neither_torch_nor_training():
    """A serving container carries no torch (docs/contract.md): importing the service must not need it."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    code = (
        "import sys, service.service; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision', 'training')))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"


def test_the_shipped_serving_yaml_writes_out_the_batching_defaults():
    """serving.yaml shows every batching key with its default; the defaults live in service/config.py."""
    import yaml

    from service.config import BATCHING
    from tests.conftest import ROOT

    shipped = yaml.safe_load((ROOT / "serving.yaml").read_text())["batching"]
    assert shipped == BATCHING, "serving.yaml's batching differs from service/config.py's BATCHING defaults"
