"""Ensemble voting on member probabilities: soft, weighted soft and hard (majority of top-1 labels)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

VOTINGS = ("soft", "weighted", "hard")


@dataclass
class Vote:
    """Per image: the ranking score of every class, its votes, the winner and how many members agree."""

    scores: np.ndarray  # [N, C] what the ranking uses: (weighted) mean probability
    votes: np.ndarray  # [N, C] how many members have each class as top-1
    winner: np.ndarray  # [N]
    agreement: np.ndarray  # [N] share of members whose top-1 is the winner
    order: np.ndarray  # [N, C] class indices, best first


def vote(members: np.ndarray, voting: str, weights: np.ndarray | None = None) -> Vote:
    """`members`: [M, N, C] probabilities.

    soft: mean probability; weighted: mean with `weights` (normalized); hard: most member top-1 votes,
    ties broken by the higher mean probability (then the lower class index, deterministically).
    """
    if voting not in VOTINGS:
        raise ValueError(f"unknown voting '{voting}'; use one of {', '.join(VOTINGS)}")
    m, n, c = members.shape
    if voting == "weighted":
        if weights is None or len(weights) != m:
            raise ValueError(f"weighted voting needs {m} member weights")
        w = np.asarray(weights, dtype=np.float64) / np.sum(weights)
    else:
        w = np.full(m, 1.0 / m)
    mean = np.tensordot(w, members.astype(np.float64), axes=1)  # [N, C]
    top1 = members.argmax(2)  # [M, N]
    votes = np.zeros((n, c), dtype=np.int64)
    for row in top1:
        votes[np.arange(n), row] += 1
    if voting == "hard":
        # lexicographic: votes first, mean probability second (lexsort keys go last-is-primary)
        order = np.stack([np.lexsort((-mean[i], -votes[i])) for i in range(n)])
    else:
        order = np.argsort(-mean, axis=1, kind="stable")
    winner = order[:, 0]
    agreement = (top1 == winner[None, :]).mean(0)
    return Vote(mean, votes, winner, agreement, order)
