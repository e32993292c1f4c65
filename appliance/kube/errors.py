"""Exceptions raised by the Kubernetes client, and their construction at the httpx edge.

    KubeError
    ├── TransportError          network failure, timeout, undecodable response
    └── ApiError                the apiserver answered with an error status
        ├── BadRequest          400
        ├── Unauthorized        401
        ├── Forbidden           403
        ├── NotFound            404
        ├── AlreadyExists       409, reason AlreadyExists
        ├── Conflict            409, any other reason (stale resourceVersion)
        ├── Gone                410 (expired resourceVersion or continue token)
        ├── Invalid             422
        ├── TooManyRequests     429 (see `retry_after`)
        └── ServerError         5xx

Callers never see an httpx exception: `map_exceptions()` wraps every call into httpx and
chains the original with `raise ... from`. Messages carry the server's Status message or
the first 256 characters of another body, never request headers or credentials.
"""

from __future__ import annotations

import contextlib
import http
import math
from collections.abc import Iterator, Mapping
from typing import Any

import httpx
import msgspec

__all__ = [
    "AlreadyExists",
    "ApiError",
    "BadRequest",
    "Conflict",
    "Forbidden",
    "Gone",
    "Invalid",
    "KubeError",
    "NotFound",
    "ServerError",
    "Status",
    "TooManyRequests",
    "TransportError",
    "Unauthorized",
    "from_response",
    "from_status",
    "map_exceptions",
]

# Non-Status bodies end up in logs and conditions; keep them short (kopf uses the same cut).
BODY_EXCERPT = 256


class KubeError(Exception):
    """Base of every error raised by `appliance.kube`."""


class TransportError(KubeError):
    """The request did not produce a usable HTTP answer: connect, TLS, timeout, garbled body."""


class ApiError(KubeError):
    """The apiserver answered with an error status."""

    def __init__(
        self,
        status: int,
        reason: str,
        message: str,
        details: dict[str, Any] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message
        self.details = details
        self.retry_after = retry_after


class BadRequest(ApiError):
    """400: the request itself is malformed."""


class Unauthorized(ApiError):
    """401: the credentials were not accepted (expired token, unknown CA)."""


class Forbidden(ApiError):
    """403: authenticated, but RBAC or admission refused the request."""


class NotFound(ApiError):
    """404: the object, namespace or resource type does not exist."""


class AlreadyExists(ApiError):
    """409 with reason AlreadyExists: a create hit an existing name."""


class Conflict(ApiError):
    """409 otherwise: an update carried a stale resourceVersion or precondition."""


class Gone(ApiError):
    """410: the resourceVersion or continue token has been compacted away; relist."""


class Invalid(ApiError):
    """422: the object failed validation; `details['causes']` says which fields."""


class TooManyRequests(ApiError):
    """429: throttled by API priority and fairness; wait `retry_after` seconds."""


class ServerError(ApiError):
    """5xx: the apiserver or etcd failed; retry with backoff."""


class Status(msgspec.Struct, kw_only=True):
    """View of a metav1.Status, the body of every apiserver error and of watch ERROR events."""

    kind: str = ""
    status: str = ""
    message: str = ""
    reason: str = ""
    details: dict[str, Any] | None = None
    code: int = 0


_STATUS = msgspec.json.Decoder(Status)

_BY_CODE: dict[int, type[ApiError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    410: Gone,
    422: Invalid,
    429: TooManyRequests,
}


def error_class(status: int, reason: str) -> type[ApiError]:
    """The exception class for an HTTP status and a Status reason."""
    if status == 409:
        return AlreadyExists if reason == "AlreadyExists" else Conflict
    if status >= 500:
        return ServerError
    return _BY_CODE.get(status, ApiError)


def from_status(status: Status, *, retry_after: float | None = None) -> ApiError:
    """Build the exception for a decoded Status (a watch ERROR event carries one)."""
    code = status.code or 500
    reason = status.reason or _phrase(code)
    if retry_after is None and status.details is not None:
        retry_after = _seconds(status.details.get("retryAfterSeconds"))
    cls = error_class(code, reason)
    return cls(code, reason, status.message or reason, status.details, retry_after)


def from_response(status_code: int, body: bytes, headers: Mapping[str, str]) -> ApiError:
    """Build the exception for an error response, preferring its metav1.Status body."""
    retry_after = _seconds(headers.get("Retry-After") or headers.get("retry-after"))
    status: Status | None = None
    if body[:1] == b"{":
        try:
            status = _STATUS.decode(body)
        except msgspec.MsgspecError:
            status = None
    if status is not None and status.kind == "Status":
        # The HTTP status decides the class: Status.code is occasionally 0 or stale.
        status.code = status_code
        return from_status(status, retry_after=retry_after)
    reason = _phrase(status_code)
    message = body[:BODY_EXCERPT].decode("utf-8", errors="replace").strip() or reason
    cls = error_class(status_code, reason)
    return cls(status_code, reason, message, None, retry_after)


@contextlib.contextmanager
def map_exceptions() -> Iterator[None]:
    """Turn httpx failures inside the block into `TransportError`, chaining the original."""
    try:
        yield
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        raise transport_error(exc) from exc


def transport_error(exc: httpx.HTTPError | httpx.InvalidURL) -> TransportError:
    """The `TransportError` for an httpx failure (raise it `from` the original)."""
    if isinstance(exc, httpx.TimeoutException):
        return TransportError(f"timed out ({type(exc).__name__})")
    return TransportError(f"{type(exc).__name__}: {exc}")


def _phrase(code: int) -> str:
    try:
        return http.HTTPStatus(code).phrase.replace(" ", "")
    except ValueError:
        return "Unknown"


def _seconds(value: object) -> float | None:
    """Parse a Retry-After value; only the delta-seconds form is used by apiservers."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            return None
    if isinstance(value, int | float) and math.isfinite(value) and value >= 0:
        return float(value)
    return None
