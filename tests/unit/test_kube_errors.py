"""Tests for appliance.kube.errors: Status bodies and httpx failures to typed exceptions."""

from __future__ import annotations

import httpx
import msgspec
import pytest

from appliance.kube import errors


def status_body(code: int, reason: str, message: str = "msg", **extra: object) -> bytes:
    return msgspec.json.encode(
        {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": reason,
            "code": code,
            **extra,
        }
    )


@pytest.mark.parametrize(
    ("code", "reason", "cls"),
    [
        pytest.param(400, "BadRequest", errors.BadRequest, id="400"),
        pytest.param(401, "Unauthorized", errors.Unauthorized, id="401"),
        pytest.param(403, "Forbidden", errors.Forbidden, id="403"),
        pytest.param(404, "NotFound", errors.NotFound, id="404"),
        pytest.param(405, "MethodNotAllowed", errors.ApiError, id="405-base"),
        pytest.param(409, "AlreadyExists", errors.AlreadyExists, id="409-exists"),
        pytest.param(409, "Conflict", errors.Conflict, id="409-conflict"),
        pytest.param(410, "Expired", errors.Gone, id="410"),
        pytest.param(422, "Invalid", errors.Invalid, id="422"),
        pytest.param(429, "TooManyRequests", errors.TooManyRequests, id="429"),
        pytest.param(500, "InternalError", errors.ServerError, id="500"),
        pytest.param(504, "Timeout", errors.ServerError, id="504"),
    ],
)
def test_status_body_maps_to_class(code: int, reason: str, cls: type[errors.ApiError]) -> None:
    """Each HTTP status (and 409's reason) selects its exception class, keeping the message."""
    exc = errors.from_response(code, status_body(code, reason, "the server said so"), {})
    assert cls is type(exc)
    assert code == exc.status
    assert reason == exc.reason
    assert "the server said so" == exc.message
    assert isinstance(exc, errors.KubeError)


def test_already_exists_is_not_a_conflict() -> None:
    """AlreadyExists and Conflict are siblings, so `except Conflict` never eats a create clash."""
    exc = errors.from_response(409, status_body(409, "AlreadyExists"), {})
    assert not isinstance(exc, errors.Conflict)


def test_details_kept() -> None:
    """Status details (causes of a 422) are kept for conditions and events."""
    details = {"name": "p", "kind": "pods", "causes": [{"field": "spec.containers"}]}
    exc = errors.from_response(422, status_body(422, "Invalid", details=details), {})
    assert details == exc.details


def test_retry_after_header_wins() -> None:
    """A Retry-After header sets retry_after, ahead of details.retryAfterSeconds."""
    body = status_body(429, "TooManyRequests", details={"retryAfterSeconds": 9})
    assert 2.0 == errors.from_response(429, body, httpx.Headers({"Retry-After": "2"})).retry_after
    assert 9.0 == errors.from_response(429, body, {}).retry_after


@pytest.mark.parametrize("value", ["soon", "-1", "inf", "Wed, 21 Oct 2015 07:28:00 GMT"])
def test_retry_after_unusable(value: str) -> None:
    """Retry-After values that are not non-negative seconds are ignored."""
    assert None is errors.from_response(503, b"", {"Retry-After": value}).retry_after


def test_non_status_body_is_cut() -> None:
    """A body that is not a Status becomes the message, cut to 256 characters."""
    exc = errors.from_response(502, b"<html>" + b"x" * 1000, {})
    assert errors.ServerError is type(exc)
    assert "BadGateway" == exc.reason
    assert errors.BODY_EXCERPT == len(exc.message)


def test_json_that_is_not_a_status() -> None:
    """JSON without kind Status is treated like any other body."""
    exc = errors.from_response(404, b'{"error": "nope"}', {})
    assert errors.NotFound is type(exc)
    assert '{"error": "nope"}' == exc.message


def test_empty_body_uses_phrase() -> None:
    """An empty body still gives a readable message."""
    exc = errors.from_response(403, b"", {})
    assert "Forbidden" == exc.message
    assert "403 Forbidden: Forbidden" == str(exc)


def test_from_status_uses_code() -> None:
    """A watch ERROR Status with code 410 becomes Gone."""
    status = errors.Status(kind="Status", code=410, reason="Expired", message="too old")
    exc = errors.from_status(status)
    assert errors.Gone is type(exc)
    assert "too old" == exc.message


@pytest.mark.parametrize(
    "exc",
    [
        httpx.ConnectError("refused"),
        httpx.ReadTimeout("slow"),
        httpx.RemoteProtocolError("garbage"),
        httpx.PoolTimeout("busy"),
    ],
)
def test_map_exceptions(exc: Exception) -> None:
    """httpx failures leave the block as TransportError with the original chained."""
    with pytest.raises(errors.TransportError) as info, errors.map_exceptions():
        raise exc
    assert exc is info.value.__cause__


def test_map_exceptions_passes_others() -> None:
    """Exceptions that are not httpx's pass through untouched."""
    with pytest.raises(KeyError), errors.map_exceptions():
        raise KeyError("x")
