"""A small typed client of the service, on httpx: files or bytes in, answers out.

    from service.client import Client
    with Client("http://localhost:3000", key=KEY) as client:       # key: sent as Authorization: Bearer KEY
        answers = client.classify(["digit.png", "cat.jpg"], top_k=3)   # one answer per image, in order
        votes = client.ensemble([open("cat.jpg", "rb").read()], voting="hard")
        served = client.models()

One image goes as the whole body (`Content-Type: image/...`, the cheapest request); several go as one multipart
request (parts named `images`). A refusal raises `Refused` with the status and the service's message. The client
holds one connection pool: keep it for many calls.
"""

from __future__ import annotations

import mimetypes
import typing as t
from pathlib import Path

import httpx

ImageLike = str | Path | bytes


class Refused(Exception):
    """The service answered with an error: `status` and its `{"error": ...}` message."""

    def __init__(self, status: int, message: str):
        super().__init__(f"{status}: {message}")
        self.status, self.message = status, message


def _content(image: ImageLike) -> tuple[str, bytes, str]:
    """(file name, bytes, content type) of an image; bytes are sniffed by the service, never trusted by type."""
    if isinstance(image, bytes):
        return "image", image, "application/octet-stream"
    path = Path(image)
    return path.name, path.read_bytes(), mimetypes.guess_type(path.name)[0] or "application/octet-stream"


class Client:
    """`Client(url, key=None, timeout=60.0)`; a context manager that closes its connections."""

    def __init__(self, url: str, key: str | None = None, timeout: float = 60.0) -> None:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def classify(
        self, images: t.Sequence[ImageLike], top_k: int = 5, model: str | None = None
    ) -> list[dict[str, t.Any]]:
        """/classify: per image {label, index, probability, top_k: [...], model}."""
        return self._post("/classify", images, {"top_k": top_k, "model": model})

    def ensemble(
        self, images: t.Sequence[ImageLike], ensemble: str = "default", voting: str | None = None, top_k: int = 5
    ) -> list[dict[str, t.Any]]:
        """/ensemble: per image {label, index, probability, voting, agreement, votes, top_k, members}."""
        return self._post("/ensemble", images, {"ensemble": ensemble, "voting": voting, "top_k": top_k})

    def models(self) -> dict[str, t.Any]:
        """/models: every served model (tag, arch, labels, input size, metrics) and every ensemble."""
        return self._answer(self.http.get("/models"))

    def _post(self, route: str, images: t.Sequence[ImageLike], fields: dict[str, t.Any]) -> t.Any:
        if isinstance(images, str | Path | bytes):
            raise TypeError("images must be a list of paths or bytes (a single image too: [image])")
        params = {k: v for k, v in fields.items() if v is not None}
        parts = [_content(image) for image in images]
        if len(parts) == 1:
            _, data, kind = parts[0]
            return self._answer(self.http.post(route, params=params, content=data, headers={"Content-Type": kind}))
        return self._answer(self.http.post(route, params=params, files=[("images", part) for part in parts]))

    @staticmethod
    def _answer(response: httpx.Response) -> t.Any:
        if response.is_success:
            return response.json()
        try:
            message = response.json()["error"]
        except (ValueError, KeyError, TypeError):
            message = response.text
        raise Refused(response.status_code, message)
