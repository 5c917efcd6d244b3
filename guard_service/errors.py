"""Errors any layer may raise for one request; the API layer renders them as OpenAI-style error bodies.

They carry an HTTP-like status because that is the vocabulary clients see, but nothing here knows about HTTP:
the service layer, the guard and the serving helpers raise these, and `api/errors.py` maps them to responses.
"""

from __future__ import annotations


class ServiceError(Exception):
    """A request the service will not or cannot serve, with the reason the client may see."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None, extra: dict | None = None):
        """`extra`: more fields of the error object, for a client that acts on them (a held version's colliding
        prompts)."""
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers or {}
        self.extra = extra or {}


class StoreUnavailable(ServiceError):
    """The policy store is locked or unreachable for longer than its busy timeout: try again later."""

    def __init__(self, message: str = "the policy store is busy; try again shortly", retry_after_s: int = 2):
        super().__init__(503, message, code="store_unavailable", headers={"Retry-After": str(retry_after_s)})
