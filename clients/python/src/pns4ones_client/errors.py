"""What a sender raises: one base class carrying the server's JSON reason."""

from __future__ import annotations

import json
from typing import Any


class SendError(Exception):
    """
    The service refused a request, or could not be reached.

    ``status`` is the HTTP status (None when no answer came), ``error`` and
    ``reason`` the server's JSON ``{"error", "reason"}``, ``field`` the member a
    ``400`` names, ``retry_after`` the seconds a ``429`` asks to wait.
    """

    def __init__(self, status: int | None, error: str, reason: str, field: str | None = None, retry_after: float | None = None) -> None:
        where = f" ({field})" if field else ""
        super().__init__(f"{status or 'no answer'} {error}: {reason}{where}")
        self.status = status
        self.error = error
        self.reason = reason
        self.field = field
        self.retry_after = retry_after


class AuthenticationError(SendError):
    """401/403: a wrong server key, or a token refused even after a fresh /auth."""


class BadRequest(SendError):
    """400: the message is malformed; ``field`` names the culprit."""


class PayloadTooLarge(SendError):
    """413: the message is bigger than the service's ``max_body_size``."""


class RateLimited(SendError):
    """429: too many sends; ``retry_after`` says how long to wait."""


class ServiceError(SendError):
    """Any other answer (404, 5xx, not JSON) or no answer at all (``status`` None)."""


_BY_STATUS: dict[int, type[SendError]] = {
    400: BadRequest,
    401: AuthenticationError,
    403: AuthenticationError,
    413: PayloadTooLarge,
    429: RateLimited,
}


def error_from_response(status: int, body: bytes, headers: Any = None) -> SendError:
    """The typed error for an unsuccessful answer; ``headers.get`` reads Retry-After."""
    try:
        doc = json.loads(body.decode("utf-8-sig"))
    except (ValueError, UnicodeDecodeError):
        doc = None
    if not isinstance(doc, dict):
        text = body[:200].decode("utf-8", "replace").strip()
        doc = {"error": "http_error", "reason": text or f"HTTP {status}"}
    retry_after = None
    raw = headers.get("Retry-After") if headers is not None else None
    if raw:
        try:
            retry_after = float(raw)
        except ValueError:
            retry_after = None
    return error_from_doc(status, doc, retry_after)


def error_from_doc(status: int, doc: dict[str, Any], retry_after: float | None = None) -> SendError:
    """The typed error for a JSON ``{"error", "reason", "field"}`` with ``status`` (a whole answer, or one message of a batch)."""
    cls = _BY_STATUS.get(status, ServiceError)
    field = doc.get("field")
    return cls(
        status,
        str(doc.get("error", "http_error")),
        str(doc.get("reason", "")),
        field=str(field) if field else None,
        retry_after=retry_after,
    )
