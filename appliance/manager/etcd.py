"""The manager's shared etcd for process-mode tenants, and removing one tenant's keys from it.

`SharedEtcd` starts etcd lazily, once, the first time a tenant asks for its URL, under
`<data_dir>/etcd` with ports chosen on first use and persisted in `ports.json`, so the same
command line (and therefore the same kept process, see `controlplane.process`) comes back
after an appliance restart. It runs in the manager's nursery, not in a tenant's: it outlives
every tenant. Each tenant stores its objects under its own `--etcd-prefix`, which
`delete_prefix` removes (etcd's JSON gateway) when the tenant is deleted.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import httpx
import trio

from appliance.controlplane import cluster, process
from appliance.controlplane.build import Binaries


def load_or_choose_ports(path: Path, names: tuple[str, ...]) -> dict[str, int]:
    """Ports persisted in `path`, or free ones chosen now and written there (0600)."""
    try:
        saved = json.loads(path.read_text())
        if all(isinstance(saved.get(n), int) for n in names):
            return {n: int(saved[n]) for n in names}
    except (OSError, ValueError):
        pass
    ports = {n: cluster.free_port() for n in names}
    write_json_private(path, ports)
    return ports


def write_json_private(path: Path, data: object) -> None:
    """Write JSON atomically with mode 0600 (the directory is created 0700)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2)
    tmp.replace(path)


class SharedEtcd:
    """One etcd for all tenants that do not ask for their own."""

    def __init__(self, *, nursery: trio.Nursery, bins: Binaries, state_dir: Path, keep: bool) -> None:
        self._nursery = nursery
        self._bins = bins
        self._state_dir = state_dir
        self._keep = keep
        self._lock = trio.Lock()
        self._url: str | None = None
        self.handle: process.ProcessHandle | None = None

    async def url(self) -> str:
        """Its client URL, starting (or re-adopting) etcd on first use.

        Raises process.ProcessFailed (with the log tail) if it cannot be started.
        """
        async with self._lock:
            if self._url is None:
                ports = await trio.to_thread.run_sync(
                    load_or_choose_ports, self._state_dir / "ports.json", ("client", "peer")
                )
                etcd = await cluster.start_etcd(
                    self._nursery, self._bins, state_dir=self._state_dir,
                    client_port=ports["client"], peer_port=ports["peer"], keep_on_cancel=self._keep,
                )
                self.handle = etcd.handle
                self._url = etcd.url
            return self._url

    def known_url(self) -> str | None:
        """The URL if etcd was started by this manager, else None (nothing to clean then)."""
        return self._url


def _prefix_end(prefix: bytes) -> bytes:
    """The smallest key greater than every key starting with `prefix`."""
    return prefix[:-1] + bytes([prefix[-1] + 1])


async def delete_prefix(etcd_url: str, prefix: str) -> int:
    """Delete every key under `prefix` (which must end with '/'); return how many went."""
    if not prefix.endswith("/") or prefix.count("/") < 3:
        raise ValueError(f"refusing to delete the broad etcd prefix {prefix!r}")
    key = prefix.encode()
    body = {
        "key": base64.b64encode(key).decode(),
        "range_end": base64.b64encode(_prefix_end(key)).decode(),
    }
    async with httpx.AsyncClient(trust_env=False, timeout=30.0) as c:
        r = await c.post(f"{etcd_url}/v3/kv/deleterange", json=body)
        r.raise_for_status()
        return int(r.json().get("deleted", 0))
