"""The service's refusals: an exception that becomes a 4xx or 5xx in the service's error body `{"error": ...}`."""

from __future__ import annotations


class InputError(Exception):
    """A request the service refuses, with the HTTP status and a message that names the part."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message

    def __reduce__(self) -> tuple:
        # rebuilt with both arguments when it comes back from a decoding process (Exception's default
        # pickling passes only `args`, the message)
        return InputError, (self.status, self.message)
