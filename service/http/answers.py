"""The answers of /classify and /ensemble as typed models: what /docs.json documents (service/http/openapi.py). The
engine builds the same shapes as plain dicts (service/engine.py), which cost less a request than models would."""

from __future__ import annotations

from pydantic import BaseModel, Field


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
