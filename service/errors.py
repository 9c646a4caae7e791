"""`InputError`: a request the service refuses, raised wherever the problem is found (reading the request, decoding
an image, the engine) and turned into its status and the body `{"error": ...}` in one place (service/http/app.py)."""

from __future__ import annotations

# every 503 (overloaded, the decoding budget full, a worker starting or at its connection cap) says when to try again:
# batches start within batching.max_latency_ms and connections free within seconds, so soon
RETRY_AFTER_S = 1


class InputError(Exception):
    """A request the service refuses, with the HTTP status and a message that names the part."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message

    def __reduce__(self) -> tuple:
        # rebuilt with both arguments when it comes back from a decoding process (Exception's default
        # pickling passes only `args`, the message)
        return InputError, (self.status, self.message)
