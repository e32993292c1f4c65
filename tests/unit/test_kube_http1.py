"""The HTTP/1.1 client codec (`appliance.kube.http1`): request bytes, response framing, errors."""

from __future__ import annotations

import pytest

from appliance.kube import http1


def read_all(reader: http1.ResponseReader, data: bytes, *, step: int | None = None, eof: bool = False) -> tuple[http1.Head, bytes]:
    """Feed `data` (in pieces of `step` bytes) and collect the head and the whole body."""
    pieces = [data] if step is None else [data[i:i + step] for i in range(0, len(data), step)]
    head, body = None, b""
    for piece in [*pieces, *([b""] if eof else [])]:
        reader.feed(piece)
        if head is None:
            head = reader.next_head()
        if head is not None:
            while (chunk := reader.next_body()):
                body += chunk
    assert head is not None and reader.done
    return head, body


def test_request_is_one_buffer_with_a_content_length() -> None:
    out = http1.encode_request(b"POST", b"/api/v1/namespaces/a/pods?x=1",
                               [(b"Host", b"h:1"), (b"Accept", b"application/json")], b'{"a":1}')
    assert out == (b"POST /api/v1/namespaces/a/pods?x=1 HTTP/1.1\r\nHost: h:1\r\nAccept: application/json\r\n"
                   b"Content-Length: 7\r\n\r\n{\"a\":1}")
    given = http1.encode_request(b"PUT", b"/", [(b"Host", b"h"), (b"content-length", b"2")], b"{}")
    assert given.count(b"ength") == 1
    assert http1.encode_request(b"GET", b"/", [(b"Host", b"h")], b"") == b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"


@pytest.mark.parametrize("header", [(b"X-A", b"v\r\nInjected: 1"), (b"X\nB", b"v"), (b"X:B", b"v")])
def test_request_refuses_headers_that_would_split_the_message(header: tuple[bytes, bytes]) -> None:
    with pytest.raises(http1.ProtocolError):
        http1.encode_request(b"GET", b"/", [(b"Host", b"h"), header], b"")


@pytest.mark.parametrize("step", [None, 1, 3, 7])
def test_content_length_body_in_any_split(step: int | None) -> None:
    data = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{\"kind\":1}\n"
    head, body = read_all(http1.ResponseReader(), data, step=step)
    assert (head.status, head.reason, head.http_version) == (200, b"OK", b"1.1")
    assert (b"Content-Type", b"application/json") in head.headers
    assert body == b'{"kind":1}\n'
    r = http1.ResponseReader()
    read_all(r, data, step=step)
    assert r.keep_alive and not r.leftover


@pytest.mark.parametrize("step", [None, 1, 2, 5])
def test_chunked_body_with_extensions_and_trailers(step: int | None) -> None:
    data = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5;ext=1\r\nhello\r\n1\r\n \r\nA\r\n0123456789\r\n0\r\nX-Trailer: t\r\n\r\n")
    reader = http1.ResponseReader()
    _, body = read_all(reader, data, step=step)
    assert body == b"hello 0123456789"
    assert reader.keep_alive and not reader.leftover


def test_interim_heads_are_skipped_and_no_body_statuses_end_at_the_head() -> None:
    _, body = read_all(http1.ResponseReader(), b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\n{}")
    assert body == b"{}"
    for status in (b"204 No Content", b"304 Not Modified"):
        reader = http1.ResponseReader()
        reader.feed(b"HTTP/1.1 " + status + b"\r\nContent-Length: 10\r\n\r\n")
        assert reader.next_head() is not None and reader.done and reader.next_body() == b""
    head_reader = http1.ResponseReader(head_request=True)
    head_reader.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n")
    assert head_reader.next_head() is not None and head_reader.done


def test_body_until_close_and_connection_close_are_not_reusable() -> None:
    reader = http1.ResponseReader()
    _, body = read_all(reader, b"HTTP/1.1 200 OK\r\n\r\nall of it", eof=True)
    assert body == b"all of it" and not reader.keep_alive
    closing = http1.ResponseReader()
    read_all(closing, b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
    assert not closing.keep_alive
    old = http1.ResponseReader()
    read_all(old, b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert not old.keep_alive


def test_bytes_beyond_the_response_are_reported() -> None:
    reader = http1.ResponseReader()
    read_all(reader, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}garbage")
    assert reader.leftover


def test_waiting_is_none_and_received_counts_bytes() -> None:
    reader = http1.ResponseReader()
    assert reader.received == 0
    reader.feed(b"HTTP/1.1 200 OK\r\nContent-")
    assert reader.next_head() is None and reader.received == 25
    reader.feed(b"Length: 4\r\n\r\nab")
    assert reader.next_head() is not None
    assert reader.next_body() == b"ab" and reader.next_body() is None and not reader.done


@pytest.mark.parametrize(("data", "error"), [
    (b"", "without a response"),
    (b"HTTP/1.1 200 OK\r\nContent-", "before a complete response head"),
    (b"SSH-2.0-OpenSSH\r\n\r\n", "status line"),
    (b"HTTP/1.1 abc OK\r\n\r\n", "status code"),
    (b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", "malformed header"),
    (b"HTTP/1.1 200 OK\r\nA: 1\r\n folded\r\n\r\n", "folding"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "Content-Length"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", "Content-Length"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", "Transfer-Encoding"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab", "body bytes missing"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "chunk size"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabXY", "CRLF"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab", "inside a chunked body"),
])
def test_malformed_or_cut_responses_raise_protocol_error(data: bytes, error: str) -> None:
    reader = http1.ResponseReader()
    reader.feed(data)
    reader.feed(b"")
    with pytest.raises(http1.ProtocolError, match=error):
        if reader.next_head() is not None:
            while reader.next_body():
                pass


def test_oversized_head_is_refused() -> None:
    reader = http1.ResponseReader()
    reader.feed(b"HTTP/1.1 200 OK\r\n" + b"X-Big: " + b"a" * http1.MAX_HEAD_BYTES)
    with pytest.raises(http1.ProtocolError, match="larger than"):
        reader.next_head()
