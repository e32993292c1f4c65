"""Metrics text format, health routing, log redaction and the systemd notify protocol."""

from __future__ import annotations

import socket
from pathlib import Path

import trio

from appliance import health, logsetup, sdnotify
from appliance.metrics import Registry


def test_metrics_render_in_prometheus_text_format() -> None:
    """Counters, gauges (incl. callbacks) and histograms render with HELP/TYPE and labels."""
    r = Registry()
    c = r.counter("syncer_dws_operations_total", "Downward reconciles.", ("resource", "code"))
    c.inc(resource="pod", code="OK")
    c.inc(2, resource="pod", code="OK")
    r.gauge("syncer_tenants", "Tenants.", callback=lambda: {(): 3.0})
    h = r.histogram("lat_seconds", "Latency.", ("resource",), buckets=(0.1, 1.0))
    h.observe(0.05, resource='p"x')
    text = r.render()
    assert '# TYPE syncer_dws_operations_total counter' in text
    assert 'syncer_dws_operations_total{resource="pod",code="OK"} 3' in text
    assert "syncer_tenants 3" in text
    assert 'lat_seconds_bucket{resource="p\\"x",le="0.1"} 1' in text
    assert 'lat_seconds_bucket{resource="p\\"x",le="+Inf"} 1' in text
    assert 'lat_seconds_count{resource="p\\"x"} 1' in text


def test_readyz_follows_components_and_stopping() -> None:
    """/readyz is 503 naming what is pending, 200 when all started, 503 again when stopping."""
    r, reg = health.Readiness("syncer", "proxy"), Registry()
    status, _, body = health.respond(b"/readyz", readiness=r, registry=reg)
    assert (503, b"not ready: proxy, syncer\n") == (status, body)
    r.mark("syncer")
    r.mark("proxy")
    assert health.respond(b"/readyz", readiness=r, registry=reg)[0] == 200
    r.stopping = True
    assert health.respond(b"/readyz", readiness=r, registry=reg)[0] == 503
    assert health.respond(b"/healthz", readiness=r, registry=reg)[0] == 200
    assert health.respond(b"/other", readiness=r, registry=reg)[0] == 404


def test_log_redaction_masks_keys_and_tokens() -> None:
    """PEM private keys and bearer tokens never reach a log line."""
    line = ("auth Bearer abcdefghijklmnop and -----BEGIN EC PRIVATE KEY-----\nMHc\n"
            "-----END EC PRIVATE KEY----- token: s3cr3ts3cr3t")
    out = logsetup.redact(line)
    assert "abcdefghijklmnop" not in out and "MHc" not in out and "s3cr3ts3cr3t" not in out
    assert out.count("[redacted]") == 3


async def test_sd_notify_sends_datagrams_to_the_socket(tmp_path: Path) -> None:
    """READY=1 arrives as one datagram on a real NOTIFY_SOCKET."""
    path = tmp_path / "notify.sock"
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    await sock.bind(str(path))
    notifier = sdnotify.Notifier.from_env({"NOTIFY_SOCKET": str(path)})
    assert await notifier.send("READY=1\nSTATUS=serving")
    with trio.fail_after(5):
        data = await sock.recv(1024)
    sock.close()
    assert b"READY=1\nSTATUS=serving" == data


async def test_sd_notify_without_socket_is_a_no_op() -> None:
    """Outside systemd nothing is sent and nothing fails."""
    assert not await sdnotify.Notifier.from_env({}).send("READY=1")


def test_watchdog_for_another_pid_is_ignored() -> None:
    """WATCHDOG_USEC meant for another process does not start pings."""
    n = sdnotify.Notifier.from_env({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "1000", "WATCHDOG_PID": "1"})
    assert n.watchdog_usec is None
