"""Tests for appliance.kube.wire: watch envelopes, metadata views and list items."""

from __future__ import annotations

import logging

import msgspec
import pytest

from appliance.kube import errors, wire

POD = {
    "kind": "Pod",
    "apiVersion": "v1",
    "metadata": {"name": "p", "namespace": "ns", "resourceVersion": "42", "uid": "u-1"},
    "spec": {"containers": [{"name": "c", "image": "busybox"}]},
}


def line(event_type: str, obj: object) -> bytes:
    return msgspec.json.encode({"type": event_type, "object": obj})


@pytest.mark.parametrize("event_type", ["ADDED", "MODIFIED", "DELETED"])
def test_object_events(event_type: str) -> None:
    """Object events keep the object's exact JSON and index its metadata."""
    event = wire.decode_event(line(event_type, POD))
    assert event is not None
    assert event_type == event.type
    assert POD == msgspec.json.decode(event.object)
    assert ("42", "ns", "p") == (event.resource_version, event.namespace, event.name)


def test_bookmark_carries_only_version() -> None:
    """A bookmark (only metadata.resourceVersion) decodes with empty name and namespace."""
    bookmark = {"kind": "Pod", "apiVersion": "v1", "metadata": {"resourceVersion": "777"}}
    event = wire.decode_event(line("BOOKMARK", bookmark))
    assert event is not None
    assert ("BOOKMARK", "777", "", "") == (
        event.type,
        event.resource_version,
        event.namespace,
        event.name,
    )


def test_error_410_raises_gone() -> None:
    """An ERROR event with code 410 raises errors.Gone with the server's message."""
    status = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": "too old resource version: 5 (90)",
        "reason": "Expired",
        "code": 410,
    }
    with pytest.raises(errors.Gone, match="too old resource version"):
        wire.decode_event(line("ERROR", status))


def test_error_500_raises_server_error() -> None:
    """An ERROR event with another code raises the matching ApiError."""
    status = {"kind": "Status", "status": "Failure", "reason": "InternalError", "code": 500}
    with pytest.raises(errors.ServerError):
        wire.decode_event(line("ERROR", status))


def test_unknown_type_is_skipped(caplog: pytest.LogCaptureFixture) -> None:
    """An event type we do not know is logged and skipped, not fatal."""
    with caplog.at_level(logging.WARNING):
        assert None is wire.decode_event(line("SOMETHING_NEW", {}))
    assert "SOMETHING_NEW" in caplog.text


def test_blank_line_is_skipped() -> None:
    """Blank lines between events are ignored."""
    assert None is wire.decode_event(b"  \r")


def test_garbage_is_transport_error() -> None:
    """Bytes that are not JSON are a TransportError, not a msgspec exception."""
    with pytest.raises(errors.TransportError):
        wire.decode_event(b'{"type": "ADDED", "object": {')


def test_meta_of_ignores_everything_else() -> None:
    """The metadata view reads name, namespace, resourceVersion and uid only."""
    meta = wire.meta_of(msgspec.json.encode(POD))
    assert wire.Meta(name="p", namespace="ns", resource_version="42", uid="u-1") == meta


def test_identity_of_reads_uid_and_annotations_only() -> None:
    """The identity view: uid and annotations (empty when absent); bad JSON is a TransportError."""
    annotated = {**POD, "metadata": {**POD["metadata"], "annotations": {"a": "1"}}}
    assert ("u-1", {"a": "1"}) == wire.identity_of(msgspec.json.encode(annotated))
    assert ("", {}) == wire.identity_of(b'{"kind":"Pod"}')
    with pytest.raises(errors.TransportError):
        wire.identity_of(b'{"metadata":{"annotations":{"a":1}}}')


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        pytest.param(
            b'{"metadata":{"name":"a"}}',
            {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "a"}},
            id="added",
        ),
        pytest.param(b"{}", {"apiVersion": "v1", "kind": "Pod"}, id="empty"),
        pytest.param(
            b'{"kind":"Pod","apiVersion":"v1","metadata":{}}',
            {"kind": "Pod", "apiVersion": "v1", "metadata": {}},
            id="already-there",
        ),
        pytest.param(
            b'{"kind":"Pod","metadata":{}}',
            {"kind": "Pod", "apiVersion": "v1", "metadata": {}},
            id="half-there",
        ),
    ],
)
def test_with_type_meta(item: bytes, expected: dict[str, object]) -> None:
    """List items get apiVersion and kind exactly once, whatever they already had."""
    out = wire.with_type_meta(item, api_version="v1", kind="Pod")
    assert expected == msgspec.json.decode(out)


def test_raw_list_page() -> None:
    """A list page keeps items raw and exposes the continue token and resourceVersion."""
    body = (
        b'{"kind":"PodList","apiVersion":"v1","metadata":{"resourceVersion":"9","continue":"abc"},'
        b'"items":[{"metadata":{"name":"a"}},{"metadata":{"name":"b"}}]}'
    )
    page = wire.RAW_PAGE.decode(body)
    assert ("9", "abc") == (page.metadata.resourceVersion, page.metadata.continue_)
    assert [b'{"metadata":{"name":"a"}}', b'{"metadata":{"name":"b"}}'] == [
        bytes(item) for item in page.items or ()
    ]


def test_line_splitter_reassembles() -> None:
    """Lines split across chunks come out whole; several in one chunk come out in order."""
    splitter = wire.LineSplitter(max_line=100)
    assert [] == splitter.feed(b'{"a"')
    assert [b'{"a":1}', b"{}"] == splitter.feed(b":1}\n{}\n{")
    assert [] == splitter.feed(b'"b":2}')
    assert [b'{"b":2}'] == splitter.finish()
    assert [] == splitter.finish()


def test_line_splitter_bounds_memory() -> None:
    """An unterminated line beyond max_line is a TransportError, not unbounded growth."""
    splitter = wire.LineSplitter(max_line=8)
    with pytest.raises(errors.TransportError):
        splitter.feed(b"x" * 9)


def test_origin_of_reads_only_what_traces_a_copy_back() -> None:
    raw = msgspec.json.encode({"metadata": {"name": "p", "namespace": "ns", "uid": "u", "annotations": {"a": "b"},
                                            "labels": {"x": "y"}}, "spec": {"containers": []}})
    assert wire.origin_of(raw) == {"metadata": {"name": "p", "namespace": "ns", "annotations": {"a": "b"}}}
    assert wire.origin_of(b"{}") == {"metadata": {"name": "", "namespace": "", "annotations": {}}}


def test_copy_json_is_deep_and_equal() -> None:
    """The copy equals the original and shares no dict or list with it."""
    original = {"metadata": {"name": "p", "labels": {"a": "b"}}, "spec": {"containers": [{"name": "c", "ports": [
        {"containerPort": 80}]}], "x": 1.5, "y": None, "z": True}}
    copied = wire.copy_json(original)
    assert copied == original
    copied["metadata"]["labels"]["a"] = "changed"
    copied["spec"]["containers"][0]["ports"].append({})
    assert original["metadata"]["labels"] == {"a": "b"}  # type: ignore[index]
    assert original["spec"]["containers"][0]["ports"] == [{"containerPort": 80}]  # type: ignore[index]
