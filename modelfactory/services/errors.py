"""The refusal that publishing and inference share: an answer to the caller with an HTTP status, nothing owed."""

from __future__ import annotations


class ServingRefused(Exception):
    """The call was refused before or while generating; nothing is owed. `status` is the HTTP status to answer
    with, `code` a short machine-readable name, `param` the request field at fault (if any)."""

    def __init__(self, message: str, *, code: str, status: int = 400, param: str | None = None, details=None):
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status
        self.param = param
        self.details = details or {}
