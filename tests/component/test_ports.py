"""Who holds a loopback port: a stranger's listener, our own child's, or only TIME_WAIT leftovers."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from appliance.controlplane import cluster, ports


def _listener(*, go_style: bool = False) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if go_style:  # Go's listeners set SO_REUSEADDR, and accepted connections inherit it
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", 0))
    s.listen()
    return s


def test_a_listener_makes_its_port_taken_unless_it_is_ours() -> None:
    """A port with a listener cannot be bound; it is a stranger's unless the listening pid is ours."""
    with _listener() as s:
        port = s.getsockname()[1]
        assert not ports.bindable("127.0.0.1", port)
        assert not ports.bindable("0.0.0.0", port)
        assert ports.taken_by_stranger("127.0.0.1", port, ours=())
        assert not ports.taken_by_stranger("127.0.0.1", port, ours=(os.getpid(),))
    assert ports.bindable("127.0.0.1", port)
    assert not ports.taken_by_stranger("127.0.0.1", port, ours=())


def test_connections_left_in_time_wait_do_not_take_the_port() -> None:
    """After a Go-style server closed a connection first (TIME_WAIT on its port), the port is free again."""
    with _listener(go_style=True) as s:
        port = s.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        conn, _ = s.accept()
        conn.close()  # the side that closes first keeps TIME_WAIT
        client.close()
    assert ports.bindable("127.0.0.1", port)


def test_free_port_is_free_now() -> None:
    """The kernel's choice can be bound right away (the race it leaves is what the checks are for)."""
    port = ports.free_port()
    assert ports.bindable("127.0.0.1", port)


def test_kwok_keeps_its_kubelet_port_across_starts_while_it_is_free(tmp_path: Path) -> None:
    """The port kept in the state dir is reused (Nodes in etcd still name it); a taken one is replaced and kept."""
    first = cluster.kwok_port(tmp_path)
    assert first == cluster.kwok_port(tmp_path)
    with socket.socket() as s:
        s.bind(("127.0.0.1", first))
        s.listen()
        second = cluster.kwok_port(tmp_path)
    assert second != first
    assert f"{second}\n" == (tmp_path / "port").read_text()
