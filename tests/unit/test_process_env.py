"""Children of the appliance never see what systemd meant for the appliance alone."""

from __future__ import annotations

from appliance.controlplane.process import child_env


def test_notify_socket_and_watchdog_are_not_inherited() -> None:
    base = {"PATH": "/usr/bin", "NOTIFY_SOCKET": "/run/systemd/notify", "WATCHDOG_USEC": "60000000",
            "WATCHDOG_PID": "77", "LISTEN_FDS": "1", "LISTEN_PID": "77", "LISTEN_FDNAMES": "x"}
    assert child_env(None, base) == {"PATH": "/usr/bin"}


def test_an_explicit_env_is_filtered_too_and_left_intact_otherwise() -> None:
    env = {"ETCDCTL_API": "3", "NOTIFY_SOCKET": "@sd", "HOME": "/var/lib/vc-appliance"}
    assert child_env(env) == {"ETCDCTL_API": "3", "HOME": "/var/lib/vc-appliance"}
    assert env["NOTIFY_SOCKET"] == "@sd"  # the caller's dict is not changed
