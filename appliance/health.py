"""The appliance's own HTTP endpoint: /healthz, /readyz, /metrics.

Plain HTTP on a configurable address, one request per connection (h11), for probes
and Prometheus. Readiness is true once every component reported `started` to its
parent (`Readiness.mark`), and false again while the process is stopping. It
deliberately serves nothing else and never echoes request data.
"""

from __future__ import annotations

import functools
import logging
from typing import NoReturn

import h11
import trio

from appliance.metrics import Registry
from appliance.util.settings import ConfigBase, Port

log = logging.getLogger(__name__)


class HttpSettings(ConfigBase, frozen=True):
    """`[http]`: where /healthz, /readyz and /metrics are served."""

    address: str = "127.0.0.1"
    #: port 0 picks a free port (logged).
    port: Port = 8080


class Readiness:
    """Components that must report ready; `ready` when none is pending and not stopping."""

    def __init__(self, *components: str) -> None:
        self.pending = set(components)
        self.stopping = False

    def mark(self, component: str) -> None:
        self.pending.discard(component)

    @property
    def ready(self) -> bool:
        return not self.pending and not self.stopping


def respond(target: bytes, *, readiness: Readiness, registry: Registry) -> tuple[int, bytes, bytes]:
    """Pure routing: (status, content type, body) for a GET of `target`."""
    path = target.split(b"?", 1)[0]
    text = b"text/plain; charset=utf-8"
    if path in (b"/healthz", b"/livez"):
        return 200, text, b"ok\n"
    if path == b"/readyz":
        if readiness.ready:
            return 200, text, b"ok\n"
        waiting = ", ".join(sorted(readiness.pending)) or "stopping"
        return 503, text, f"not ready: {waiting}\n".encode()
    if path == b"/metrics":
        return 200, b"text/plain; version=0.0.4; charset=utf-8", registry.render().encode()
    return 404, text, b"not found\n"


async def _handle(stream: trio.abc.Stream, *, readiness: Readiness, registry: Registry) -> None:
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=16384)
    try:
        with trio.fail_after(10):
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(bytes(await stream.receive_some(16384)))
                    continue
                break
            if not isinstance(event, h11.Request):
                return
            if event.method not in (b"GET", b"HEAD"):
                status, ctype, body = 405, b"text/plain", b"method not allowed\n"
            else:
                status, ctype, body = respond(event.target, readiness=readiness, registry=registry)
            headers = [(b"content-type", ctype), (b"content-length", str(len(body)).encode()),
                       (b"connection", b"close")]
            await stream.send_all(conn.send(h11.Response(status_code=status, headers=headers)))
            if event.method != b"HEAD":
                await stream.send_all(conn.send(h11.Data(data=body)))
            await stream.send_all(conn.send(h11.EndOfMessage()))
    except (h11.RemoteProtocolError, trio.BrokenResourceError, trio.TooSlowError):
        pass
    finally:
        await stream.aclose()


async def serve(
    *,
    settings: HttpSettings,
    readiness: Readiness,
    registry: Registry,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Serve forever; reports the bound port (useful with port 0)."""
    listeners = await trio.open_tcp_listeners(settings.port, host=settings.address)
    bound = listeners[0].socket.getsockname()[1]
    log.info("http endpoint on %s:%d (/healthz /readyz /metrics)", settings.address, bound)
    async with trio.open_nursery() as nursery:
        task_status.started(bound)
        await trio.serve_listeners(
            functools.partial(_handle, readiness=readiness, registry=registry), listeners,
            handler_nursery=nursery,
        )
    raise AssertionError("unreachable")
