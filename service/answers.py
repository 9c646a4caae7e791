"""The routes' answers: the response models of /classify and /ensemble, and the JSON response that carries them."""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, Field
from starlette.responses import JSONResponse


class Prediction(BaseModel):
    label: str
    index: int
    probability: float


class Classification(Prediction):
    top_k: list[Prediction]
    model: str


class MemberAnswer(Prediction):
    model: str


class EnsembleClassification(Prediction):
    voting: str
    agreement: float = Field(description="share of members whose top-1 label is the ensemble's label")
    votes: dict[str, int] = Field(description="member top-1 votes per label (labels with no vote are left out)")
    top_k: list[Prediction]
    members: list[MemberAnswer]


def ranked(labels: list[str], scores: np.ndarray, order: np.ndarray, k: int) -> list[Prediction]:
    """The first `k` labels of `order`, with their scores."""
    return [Prediction(label=labels[j], index=int(j), probability=float(scores[j])) for j in order[:k]]


def answer(out: list[BaseModel]) -> JSONResponse:
    """The answers as one JSON response. The endpoints' return annotations still document them in the
    OpenAPI schema, but returning a Response skips BentoML's output path, which builds the output type's
    JSON schema on every response (bench/README.md, 'Digits on the CPU') and sends
    the body in pieces through each middleware."""
    return JSONResponse([o.model_dump() for o in out])
