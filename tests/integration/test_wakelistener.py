"""The wake listener with real sockets: the first connection wakes, held bytes reach the woken server."""

from __future__ import annotations

import trio

from appliance.controlplane.cluster import free_port
from appliance.manager.wakelistener import WakeListener


async def test_first_connection_wakes_and_is_joined_to_the_server_that_takes_the_port(
    nursery: trio.Nursery,
) -> None:
    port = free_port()
    pokes: list[int] = []
    listener = WakeListener("127.0.0.1", port, on_wake=lambda: pokes.append(1))
    await nursery.start(listener.run)
    client = await trio.open_tcp_stream("127.0.0.1", port)
    await client.send_all(b"hello before the server exists\n")
    with trio.fail_after(10):
        await listener.woken.wait()
    assert pokes == [1] and listener.first_peer.startswith("127.0.0.1:")

    listener.stop_listening()
    # The woken server binds the same port (as kube-apiserver does) and echoes upper case.
    server_ready = trio.Event()

    async def server() -> None:
        listeners = None
        with trio.fail_after(10):
            while listeners is None:
                try:
                    listeners = await trio.open_tcp_listeners(port, host="127.0.0.1")
                except OSError:
                    await trio.sleep(0.05)  # the listening socket is still closing
        server_ready.set()

        async def echo(stream: trio.SocketStream) -> None:
            async with stream:
                while data := await stream.receive_some(1024):
                    await stream.send_all(data.upper())

        await trio.serve_listeners(echo, listeners)

    nursery.start_soon(server)
    await server_ready.wait()
    await listener.hand_over("127.0.0.1", port)
    got = b""
    with trio.fail_after(10):
        while not got.endswith(b"\n"):
            got += await client.receive_some(1024)
    assert got == b"HELLO BEFORE THE SERVER EXISTS\n"
    await client.send_all(b"and after\n")
    got = b""
    with trio.fail_after(10):
        while not got.endswith(b"\n"):
            got += await client.receive_some(1024)
    assert got == b"AND AFTER\n"
    await client.aclose()
    nursery.cancel_scope.cancel()
