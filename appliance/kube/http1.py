"""HTTP/1.1 client messages as pure functions: a request's bytes, a response's head and body.

The syncer makes four or five API writes per Pod and reads a dozen watch streams; under
httpcore and h11 each request cost ~0.9 ms of CPU, plus ~0.5 ms more with 40 watches open
(the pool scans every connection per request). This codec is what `transport.Http1Transport`
needs and no more: the responses a kube-apiserver sends (Content-Length, chunked, or until
close; no trailers kept, no 1xx except as skipped interim heads, no upgrades).

`ResponseReader` is fed bytes as they arrive and hands back the head, then body bytes, and
says when the message is complete and whether the connection may be reused. It raises
`ProtocolError` for anything malformed or over its limits, never for a short read.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["MAX_HEAD_BYTES", "Head", "ProtocolError", "ResponseReader", "encode_request"]

#: A response head larger than this is refused (kube-apiserver heads are a few hundred bytes).
MAX_HEAD_BYTES = 64 * 1024
#: A chunk-size line longer than this is malformed (hex digits plus extensions).
MAX_CHUNK_LINE = 1024

_NO_BODY_STATUS = frozenset({204, 304})


class ProtocolError(Exception):
    """The peer sent something that is not an HTTP/1.1 response we can read."""


@dataclass(frozen=True, slots=True)
class Head:
    status: int
    reason: bytes
    headers: list[tuple[bytes, bytes]]
    http_version: bytes


def encode_request(method: bytes, target: bytes, headers: list[tuple[bytes, bytes]], body: bytes) -> bytes:
    """The request line, headers and body as one buffer (sent in one write: one TLS record).

    `headers` must already carry Host; a body gets a Content-Length unless one is given.
    Header values with CR or LF are refused (they would split the message).
    """
    parts = [method, b" ", target, b" HTTP/1.1\r\n"]
    has_length = False
    for name, value in headers:
        if b"\r" in value or b"\n" in value or b"\r" in name or b"\n" in name or b":" in name:
            raise ProtocolError(f"header {name!r} cannot be sent: it contains CR, LF or ':'")
        if not has_length and name.lower() == b"content-length":
            has_length = True
        parts += (name, b": ", value, b"\r\n")
    if body and not has_length:
        parts += (b"Content-Length: ", str(len(body)).encode(), b"\r\n")
    parts.append(b"\r\n")
    parts.append(body)
    return b"".join(parts)


def _parse_head(raw: bytes) -> Head:
    lines = raw.split(b"\r\n")
    status_line = lines[0].split(b" ", 2)
    if len(status_line) < 2 or not status_line[0].startswith(b"HTTP/1."):
        raise ProtocolError(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
    try:
        status = int(status_line[1])
    except ValueError:
        raise ProtocolError(f"bad status code in {lines[0][:80]!r}") from None
    if not 100 <= status <= 999:
        raise ProtocolError(f"bad status code in {lines[0][:80]!r}")
    headers: list[tuple[bytes, bytes]] = []
    for line in lines[1:]:
        if not line:
            continue
        if line[0] in b" \t":
            raise ProtocolError("obsolete header line folding")
        name, sep, value = line.partition(b":")
        if not sep or not name or name != name.strip():
            raise ProtocolError(f"malformed header line {line[:80]!r}")
        headers.append((name, value.strip(b" \t")))
    return Head(status, status_line[2] if len(status_line) > 2 else b"", headers, status_line[0][5:])


class ResponseReader:
    """Reads one response; `head_request` is True when the request was HEAD (no body follows)."""

    def __init__(self, *, head_request: bool = False) -> None:
        self._buffer = bytearray()
        self._head_request = head_request
        self.head: Head | None = None
        self.done = False
        self.keep_alive = False
        self._mode = ""  # "length", "chunked", "close"
        self._remaining = 0  # bytes left in the body ("length") or in this chunk ("chunked")
        self._chunk_state = "size"  # "size", "data", "crlf", "trailers"
        self._eof = False
        self.received = 0  # bytes fed so far: none means the peer never answered

    # -- feeding ----------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        """Add bytes received from the connection; b"" means the peer closed it."""
        if data:
            self._buffer += data
            self.received += len(data)
        else:
            self._eof = True

    def next_head(self) -> Head | None:
        """The final response head once it has all arrived (interim 1xx heads are skipped).

        Raises ProtocolError when the connection ended before it or it is malformed.
        """
        while self.head is None:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buffer) > MAX_HEAD_BYTES:
                    raise ProtocolError(f"response head larger than {MAX_HEAD_BYTES} bytes")
                if self._eof:
                    raise ProtocolError("connection closed before a complete response head"
                                        if self._buffer else "connection closed without a response")
                return None
            head = _parse_head(bytes(self._buffer[:end]))
            del self._buffer[: end + 4]
            if 100 <= head.status < 200:
                continue
            self._start_body(head)
            self.head = head
        return self.head

    def _start_body(self, head: Head) -> None:
        connection = b""
        length: int | None = None
        chunked = False
        for name, value in head.headers:
            lname = name.lower()
            if lname == b"content-length":
                try:
                    n = int(value)
                except ValueError:
                    raise ProtocolError(f"bad Content-Length {value[:40]!r}") from None
                if n < 0 or (length is not None and length != n):
                    raise ProtocolError(f"bad Content-Length {value[:40]!r}")
                length = n
            elif lname == b"transfer-encoding":
                codings = [c.strip().lower() for c in value.split(b",")]
                if codings[-1] != b"chunked" or codings.count(b"chunked") != 1:
                    raise ProtocolError(f"unsupported Transfer-Encoding {value[:40]!r}")
                chunked = True
            elif lname == b"connection":
                connection = value.lower()
        reusable = head.http_version == b"1.1" and b"close" not in connection
        if self._head_request or head.status in _NO_BODY_STATUS:
            self._mode, self._remaining = "length", 0
        elif chunked:
            self._mode = "chunked"
        elif length is not None:
            self._mode, self._remaining = "length", length
        else:
            self._mode, reusable = "close", False
        self.keep_alive = reusable
        if self._mode == "length" and self._remaining == 0:
            self.done = True

    # -- body -------------------------------------------------------------------------

    def next_body(self) -> bytes | None:
        """Body bytes available now: non-empty data, b"" once the body is complete, or None
        when more must be received. Raises ProtocolError on malformed framing or on a
        connection that ended inside the body."""
        if self.head is None:
            raise RuntimeError("next_body before next_head")
        if self.done:
            return b""
        if self._mode == "length":
            return self._take_length()
        if self._mode == "close":
            if self._buffer:
                data = bytes(self._buffer)
                self._buffer.clear()
                return data
            if self._eof:
                self.done = True
                return b""
            return None
        return self._take_chunked()

    def _take_length(self) -> bytes | None:
        if not self._buffer:
            if self._eof:
                raise ProtocolError(f"connection closed with {self._remaining} body bytes missing")
            return None
        n = min(self._remaining, len(self._buffer))
        data = bytes(self._buffer[:n])
        del self._buffer[:n]
        self._remaining -= n
        if not self._remaining:
            self.done = True
        return data

    def _take_chunked(self) -> bytes | None:
        out: list[bytes] = []
        while not self.done:
            if self._chunk_state == "size":
                end = self._buffer.find(b"\r\n")
                if end < 0:
                    if len(self._buffer) > MAX_CHUNK_LINE:
                        raise ProtocolError("chunk-size line too long")
                    break
                line = bytes(self._buffer[:end]).split(b";", 1)[0].strip()
                del self._buffer[: end + 2]
                try:
                    size = int(line, 16)
                except ValueError:
                    raise ProtocolError(f"bad chunk size {line[:40]!r}") from None
                if size < 0 or line.startswith((b"-", b"+", b"0x", b"0X")):
                    raise ProtocolError(f"bad chunk size {line[:40]!r}")
                if size == 0:
                    self._chunk_state = "trailers"
                else:
                    self._chunk_state, self._remaining = "data", size
            elif self._chunk_state == "data":
                if not self._buffer:
                    break
                n = min(self._remaining, len(self._buffer))
                out.append(bytes(self._buffer[:n]))
                del self._buffer[:n]
                self._remaining -= n
                if not self._remaining:
                    self._chunk_state = "crlf"
            elif self._chunk_state == "crlf":
                if len(self._buffer) < 2:
                    break
                if self._buffer[:2] != b"\r\n":
                    raise ProtocolError("chunk data not followed by CRLF")
                del self._buffer[:2]
                self._chunk_state = "size"
            else:  # trailers: header lines up to an empty one, dropped
                end = self._buffer.find(b"\r\n")
                if end < 0:
                    if len(self._buffer) > MAX_HEAD_BYTES:
                        raise ProtocolError("trailers too large")
                    break
                del self._buffer[: end + 2]
                if end == 0:
                    self.done = True
        if out:
            return out[0] if len(out) == 1 else b"".join(out)
        if self.done:
            return b""
        if self._eof:
            raise ProtocolError("connection closed inside a chunked body")
        return None

    @property
    def leftover(self) -> bool:
        """Bytes received beyond the end of this response (the connection is then unusable)."""
        return bool(self._buffer)
