"""The repository's systemd unit, installed unchanged, run by a real systemd (252, PID 1 in podman).

The container has the app image, systemd, the unit in /etc/systemd/system and one drop-in that
shortens WatchdogSec so a hang is caught within the test's deadline. It shares the host's network
with the session super cluster. The tests run in file order on one container (booting it and
provisioning the tenant is the expensive part) and each leaves the service active.
"""

from __future__ import annotations

import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from appliance.controlplane.cluster import free_port
from tests.container import podman, tenants
from tests.testbed import SuperCluster, run_kubectl, wait_for

UNIT = "vc-appliance.service"
UID = 10001


@dataclass
class Host:
    ctr: podman.Container
    http: int
    run: str
    tmp: Path
    tenant: tenants.ProvisionedTenant | None = None

    async def show(self, *props: str) -> dict[str, str]:
        out = await self.ctr.sh(f"systemctl show {UNIT} " + " ".join(f"-p {p}" for p in props))
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    async def journal(self) -> str:
        return await self.ctr.sh(f"journalctl -u {UNIT} --no-pager -o cat")

    async def ready(self) -> bool:
        out = await self.ctr.sh(f"python3 -c \"import urllib.request as u; "
                                f"print(u.urlopen('http://127.0.0.1:{self.http}/readyz', timeout=3).status)\"",
                                check=False)
        return out.strip() == "200"

    async def tenant_pids(self) -> dict[str, int]:
        """Tenant control-plane processes by pid file (the appliance writes one per child)."""
        out = await self.ctr.sh("for f in $(find /var/lib/vc-appliance -name '*.pid'); do "
                                "echo \"$(basename $f .pid) $(cut -d' ' -f1 $f)\"; done")
        return {name: int(pid) for name, pid in (line.split() for line in out.splitlines())}

    async def alive(self, pid: int) -> bool:
        return (await self.ctr.sh(f"kill -0 {pid} && echo yes", check=False)).strip() == "yes"

    async def restarted(self, restarts_before: int) -> bool:
        state = await self.show("ActiveState", "NRestarts")
        return state["ActiveState"] == "active" and int(state["NRestarts"]) > restarts_before and await self.ready()


@pytest.fixture(scope="module")
def host(systemd_image: str, super_cluster: SuperCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Host]:
    """A booted systemd container with the appliance's config and the super kubeconfig in /etc."""
    run = uuid.uuid4().hex[:8]
    tmp = tmp_path_factory.mktemp("systemd")
    etc = tmp / "etc"
    etc.mkdir()
    http, proxy = free_port(), free_port()
    (etc / "appliance.toml").write_text(f"""data-dir = "/var/lib/vc-appliance"
binaries-dir = "/opt/kubernetes/bin"
graceful-timeout = 10.0
tenant-selector = "{tenants.SELECTOR_LABEL}={run}"
[super]
kubeconfig = "/etc/vc-appliance/super.kubeconfig"
[http]
port = {http}
[proxy]
port = {proxy}
""")
    shutil.copy(super_cluster.kubeconfig, etc / "super.kubeconfig")
    os.chown(etc / "super.kubeconfig", 0, UID)
    (etc / "super.kubeconfig").chmod(0o640)
    name = f"vca-sd-{run}"
    with podman.removed_after(name) as ctr:
        podman.run("run", "--detach", "--name", name, "--systemd=always", "--cap-add", "SYS_ADMIN",
                   "--network=host", "--volume", f"{etc}:/etc/vc-appliance:ro", systemd_image)
        deadline = 60
        for _ in range(deadline * 5):
            state = podman.run("exec", name, "systemctl", "is-system-running", check=False).stdout.strip()
            if state in ("running", "degraded"):
                break
            time.sleep(0.2)  # a sync fixture polling another process's state, with a deadline
        else:
            pytest.fail(f"systemd in {name} did not finish booting within {deadline} s")
        try:
            yield Host(ctr, http, run, tmp)
        finally:
            trio.run(tenants.forget, super_cluster, run)


async def test_unit_verifies_and_its_exposure_is_reported(host: Host) -> None:
    """`systemd-analyze verify` accepts the unit where its ExecStart exists; `security` rates it."""
    verify = await podman.arun("exec", host.ctr.name, "systemd-analyze", "verify", f"/etc/systemd/system/{UNIT}",
                               check=False)
    assert verify.returncode == 0, (verify.stdout + verify.stderr).decode()
    security = await host.ctr.sh(f"systemd-analyze security --no-pager {UNIT}")
    exposure = re.search(r"Overall exposure level for \S+: (\d+\.\d+) (\w+)", security)
    assert exposure, security[-2000:]
    print(f"\nsystemd-analyze security: exposure {exposure[1]} {exposure[2]}")
    assert float(exposure[1]) < 5.0, f"exposure {exposure[1]} {exposure[2]} (was 3.2 OK when this was written)"


async def test_start_returns_once_ready_and_the_hardening_is_in_force(host: Host) -> None:
    """Type=notify: `systemctl start` returns only after READY=1, so /readyz answers 200 at once;
    the main process runs unprivileged, sandboxed, with a read-only system."""
    await host.ctr.sh(f"systemctl start {UNIT}", timeout=150)
    assert await host.ready(), "systemctl start returned before the appliance was ready"
    state = await host.show("ActiveState", "SubState", "MainPID", "StatusText")
    assert (state["ActiveState"], state["SubState"]) == ("active", "running"), state
    pid = state["MainPID"]
    status = await host.ctr.sh(f"cat /proc/{pid}/status")
    fields = dict(re.findall(r"^(\w+):\s+(.*)$", status, re.M))
    assert fields["Uid"].split()[0] == str(UID)
    assert fields["NoNewPrivs"] == "1" and fields["Seccomp"] == "2", fields
    assert int(fields["CapEff"], 16) == 0 and int(fields["CapBnd"], 16) == 0, fields
    mounts = await host.ctr.sh(f"cat /proc/{pid}/mountinfo")
    root = next(line for line in mounts.splitlines() if line.split()[4] == "/")
    assert "ro" in root.split()[5].split(","), f"ProtectSystem=strict: / must be read-only: {root}"
    assert any(line.split()[4] == "/tmp" for line in mounts.splitlines()), "PrivateTmp: /tmp is its own mount"


async def test_tenant_runs_under_the_hardened_unit(host: Host, super_cluster: SuperCluster) -> None:
    """etcd, kube-apiserver and kube-controller-manager start inside the sandbox (no AF_NETLINK,
    read-only system) and none of them talks to systemd's notify socket."""
    host.tenant = await tenants.provision(super_cluster, host.tmp, host.run)
    await run_kubectl(super_cluster.kubectl, host.tenant.kubeconfig, "get", "namespaces")
    pids = await host.tenant_pids()
    assert {"etcd", "kube-apiserver", "kube-controller-manager"} <= set(pids), pids
    journal = await host.journal()
    assert "but reception only permitted for main PID" not in journal, \
        "a child of the appliance sent sd_notify messages: NOTIFY_SOCKET leaked to it"


async def test_a_crash_restarts_the_appliance_and_keeps_the_tenant(host: Host, super_cluster: SuperCluster) -> None:
    """SIGKILL of the main process → Restart=on-failure; the tenant's processes (KillMode=process)
    are the same ones afterwards and still serve. With KillMode=mixed this fails: systemd kills them."""
    assert host.tenant is not None
    before = await host.tenant_pids()
    restarts = int((await host.show("NRestarts"))["NRestarts"])
    main = (await host.show("MainPID"))["MainPID"]
    await host.ctr.sh(f"kill -KILL {main}")
    await wait_for(lambda: host.restarted(restarts), timeout=120, what="the appliance restarted after a crash")
    assert all([await host.alive(pid) for pid in before.values()]), "tenant processes died with the appliance"
    assert await host.tenant_pids() == before, "the restarted appliance started new tenant processes"
    await run_kubectl(super_cluster.kubectl, host.tenant.kubeconfig, "get", "namespaces")
    assert re.search(r"processes up \([1-9]\d* adopted\)", await host.journal()), "no tenant was adopted"


async def test_a_hung_appliance_is_restarted_by_the_watchdog(host: Host, super_cluster: SuperCluster) -> None:
    """A stopped (SIGSTOP) main process pings no more: the watchdog aborts it and systemd restarts it."""
    assert host.tenant is not None
    before = await host.tenant_pids()
    restarts = int((await host.show("NRestarts"))["NRestarts"])
    main = (await host.show("MainPID"))["MainPID"]
    await host.ctr.sh(f"kill -STOP {main}")
    await wait_for(lambda: host.restarted(restarts), timeout=120, what="the watchdog restarted the appliance")
    assert "Watchdog timeout" in await host.journal()
    assert await host.tenant_pids() == before
    await run_kubectl(super_cluster.kubectl, host.tenant.kubeconfig, "get", "namespaces")


async def test_stop_is_clean_and_leaves_the_tenant_running(host: Host, super_cluster: SuperCluster) -> None:
    """`systemctl stop`: SIGTERM, exit 0 within TimeoutStopSec (Result=success, not timeout);
    the tenant keeps running and the next start adopts it."""
    assert host.tenant is not None
    before = await host.tenant_pids()
    await host.ctr.sh(f"systemctl stop {UNIT}", timeout=90)
    state = await host.show("ActiveState", "Result", "ExecMainStatus", "ExecMainCode")
    assert state["ActiveState"] == "inactive" and state["Result"] == "success", state
    assert state["ExecMainStatus"] == "0", state
    assert all([await host.alive(pid) for pid in before.values()])
    await run_kubectl(super_cluster.kubectl, host.tenant.kubeconfig, "get", "namespaces")
    await host.ctr.sh(f"systemctl start {UNIT}", timeout=150)
    assert await host.ready()
    assert await host.tenant_pids() == before
    assert await tenants.phase(super_cluster, host.tenant.ns, host.tenant.name) == host.tenant.key
