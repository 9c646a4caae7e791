"""Models for classification outside the server: a model-store tag or an exported `.onnx` file -> a `Graph`,
and several of them voting as one ensemble.

The session call is service/runtime.py's `Graph.run` and the voting core/voting.py's `vote`, the code behind
`/classify` and `/ensemble`, so a batch of pixels gets the probabilities the service would answer. A `Model`
holds its sessions and nothing else: the object a Ray Data callable class keeps per actor.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core import metadata
from core.devices import uses_gpu
from core.errors import UserError
from core.voting import VOTINGS, Vote, vote
from service.runtime import Graph
from service.stored import store_path

# `a+b+c`: an ensemble of the members a, b and c (store tags and .onnx files alike); '+' is in no store tag
ENSEMBLE_SEPARATOR = "+"


def members_of(spec: str) -> list[str]:
    """The member specs of a MODEL argument: one model, or an ensemble written `a+b`."""
    if Path(spec).is_file():  # an .onnx file whose name holds a '+' is one model
        return [spec]
    parts = spec.split(ENSEMBLE_SEPARATOR)
    if not all(parts):
        raise UserError(f"model '{spec}' has an empty member; write an ensemble as a+b (store tags or .onnx files)")
    return parts


def graph_file(spec: str) -> tuple[str, Path]:
    """(name, ONNX file) of one model: an `.onnx` file, or a store tag `name[:version]` in $BENTOML_HOME."""
    path = Path(spec)
    if path.is_file():
        return spec, path
    if path.suffix == ".onnx":
        raise UserError(f"ONNX file not found: {spec}")
    import bentoml  # only for store tags: a second of imports that an .onnx file does without
    from bentoml.exceptions import BentoMLException

    try:
        stored = bentoml.models.get(spec)
    except (BentoMLException, ValueError):
        raise UserError(
            f"model '{spec}' is neither an .onnx file nor in the BentoML model store at {store_path()}: "
            "export it with `python -m export CKPT --store NAME`, or name the .onnx file"
        ) from None
    return str(stored.tag), Path(stored.path_of(metadata.MODEL_FILE))


@dataclass
class Member:
    name: str
    graph: Graph

    @property
    def meta(self) -> dict[str, Any]:
        return self.graph.meta


def load_member(spec: str, device: str = "auto", batch_size: int | None = None, cpu_threads: int = 0) -> Member:
    """One model's sessions. On a GPU every call runs at `batch_size` (a last, smaller batch is padded to it),
    since a new input shape costs a CUDA session a new cuDNN algorithm search (service/runtime.py)."""
    name, path = graph_file(spec)
    try:
        sizes = [batch_size] if batch_size and uses_gpu(device) else None
        return Member(name, Graph(path, device, cpu_threads, sizes))
    except Exception as e:  # not a graph, a graph of another project, or a newer format
        raise UserError(f"cannot load model '{name}' from {path}: {' '.join(str(e).split())}") from None


def check_members(members: list[Member]) -> None:
    """Members of an ensemble vote on the same classes from the same pixels (core.metadata.member_mismatch)."""
    for other in members[1:]:
        if (why := metadata.member_mismatch(members[0].name, members[0].meta, other.name, other.meta)) is not None:
            raise UserError(f"ensemble {why}")


def rank(members: np.ndarray, voting: str = "soft", weights: np.ndarray | None = None) -> Vote:
    """float [M, N, C] member probabilities -> the ranking of every image: one member's probabilities as they are
    (best first, ties to the lower index: `/classify`'s order), or the members' vote (`/ensemble`'s)."""
    if len(members) > 1:
        return vote(members, voting, weights)
    scores = members[0]
    order = np.argsort(-scores, axis=1, kind="stable")
    winner = order[:, 0]
    votes = np.zeros(scores.shape, np.int64)
    votes[np.arange(len(scores)), winner] = 1
    return Vote(scores, votes, winner, np.ones(len(scores)), order)


def top(labels: Sequence[str], scores: np.ndarray, order: np.ndarray, k: int) -> list[dict[str, Any]]:
    """The first `k` classes of `order` with their scores, as every answer words them."""
    return [{"label": labels[j], "index": int(j), "probability": float(scores[j])} for j in order[:k]]


@dataclass
class Ranked:
    """Per image: the score of every class (a probability, or an ensemble's (weighted) mean probability) and
    the classes best first."""

    scores: np.ndarray  # [N, C]
    order: np.ndarray  # [N, C]


class Model:
    """One model, or an ensemble of several voting: uint8 [N, H, W, 3] -> `Ranked`.

    One model ranks as `/classify` does; two or more vote as `/ensemble` does (soft, weighted with one
    weight per member, or hard).
    """

    def __init__(self, members: list[Member], voting: str = "soft", weights: list[float] | None = None):
        if not members:
            raise UserError("no model given")
        if voting not in VOTINGS:
            raise UserError(f"voting must be one of {', '.join(VOTINGS)}, got '{voting}'")
        if voting == "weighted" and (weights is None or len(weights) != len(members)):
            raise UserError(f"weighted voting needs one weight per member ({len(members)}), got {weights}")
        if weights is not None and voting != "weighted":
            raise UserError("weights are for weighted voting: add --voting weighted, or leave the weights out")
        if weights is not None and (min(weights) < 0 or sum(weights) <= 0):
            raise UserError(f"weights must be non-negative numbers with a positive sum, got {weights}")
        check_members(members)
        self.members, self.voting = members, voting
        self.weights = np.asarray(weights, dtype=np.float64) if weights is not None else None
        meta = members[0].meta
        self.labels: list[str] = meta["labels"]
        self.preprocess: dict[str, Any] = metadata.preprocess_of(meta)
        self.input_shape: tuple[int, int, int] = members[0].graph.input_shape

    @classmethod
    def load(
        cls,
        spec: str | list[str],
        voting: str = "soft",
        weights: list[float] | None = None,
        device: str = "auto",
        batch_size: int | None = None,
        cpu_threads: int = 0,
    ) -> Model:
        """`spec`: a store tag or .onnx file, `a+b` for an ensemble, or a list of member specs."""
        specs = members_of(spec) if isinstance(spec, str) else list(spec)
        return cls([load_member(s, device, batch_size, cpu_threads) for s in specs], voting, weights)

    @property
    def is_ensemble(self) -> bool:
        return len(self.members) > 1

    def member_probabilities(self, pixels: np.ndarray) -> np.ndarray:
        """float32 [M, N, C]: every member's probabilities."""
        return np.stack([m.graph.run(pixels)["probabilities"] for m in self.members])

    def __call__(self, pixels: np.ndarray) -> Ranked:
        if not len(pixels):  # a batch of files that all failed to decode: no session call
            empty = np.empty((0, len(self.labels)))
            return Ranked(empty, empty.astype(np.int64))
        result = rank(self.member_probabilities(pixels), self.voting, self.weights)
        return Ranked(result.scores, result.order)
