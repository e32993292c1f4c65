"""Certificate renewal through the real `vc-appliance` process, with 60-second certificates.

On request (`vc-appliance rotate-certs`) and on schedule (at 80 % of their validity), a tenant's
certificates are renewed and its processes restarted one at a time. The test waits until the
first certificates have expired, then proves that everything which holds a tenant certificate
still works: the admin kubeconfig from the secret (kubectl), the tenant's controller-manager
(a scaled Deployment gets its Pods), and the syncer (those Pods reach the super cluster and
report Running, and it never lost the tenant on the way) — while the expired admin
kubeconfig is refused.
"""

from __future__ import annotations

import datetime as dt
import json
import socket
import ssl
import uuid
from pathlib import Path
from typing import Any

import trio
from cryptography import x509

from tests.e2e.appliance_proc import WEB_DEPLOYMENT, Appliance, running_for_run, wait_web_synced
from tests.testbed import SuperCluster, run_kubectl, tenancy_manifests, wait_for

LIFETIME = 60



async def _vc(sc: SuperCluster, ns: str, name: str) -> dict[str, Any]:
    out = await run_kubectl(sc.kubectl, sc.kubeconfig, "get", "vc", name, "-n", ns, "-o", "json")
    vc: dict[str, Any] = json.loads(out.stdout)
    return vc


def _served_certificate(server: str) -> x509.Certificate:
    """The certificate the apiserver presents now (blocking: run in a thread)."""
    host, port = server.removeprefix("https://").rsplit(":", 1)
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    with socket.create_connection((host, int(port)), timeout=5) as raw, ctx.wrap_socket(raw) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def _pids(app: Appliance, key: str) -> dict[str, int]:
    logs = app.data_dir / "tenants" / key / "logs"
    return {p.stem: int(p.read_text().split()[0]) for p in logs.glob("*.pid")}


async def test_certificates_renewed_on_request_and_on_schedule_and_nothing_stops_working(
    tmp_path: Path, super_cluster: SuperCluster,
) -> None:
    sc, run = super_cluster, uuid.uuid4().hex[:8]
    async with running_for_run(sc, tmp_path, run, env={"VCA_MANAGER_CERTIFICATE_LIFETIME": str(LIFETIME)}) as app:
        await _scenario(sc, app, tmp_path, run)


async def _scenario(sc: SuperCluster, app: Appliance, tmp_path: Path, run: str) -> None:
    kubectl, skc = sc.kubectl, sc.kubeconfig
    ns = f"e2e-cert-{run}"
    await run_kubectl(kubectl, skc, "create", "namespace", ns)
    await run_kubectl(kubectl, skc, "apply", "-f", "-", stdin=tenancy_manifests(
        cv=f"cv-cert-{run}", name="certs", namespace=ns, labels={"e2e": run}))

    async def running_key() -> str | None:
        status = (await _vc(sc, ns, "certs")).get("status", {})
        assert status.get("phase") != "Error", status
        return status.get("clusterNamespace") if status.get("phase") == "Running" else None

    key = str(await wait_for(running_key, timeout=180, what="the VirtualCluster Running"))
    pki = app.data_dir / "tenants" / key / "pki"
    first = x509.load_pem_x509_certificate((pki / "apiserver.crt").read_bytes())
    assert first.not_valid_after_utc - dt.datetime.now(dt.UTC) < dt.timedelta(seconds=LIFETIME + 1)
    rc, out, err = await app.cli("kubeconfig", f"{ns}/certs")
    assert rc == 0, err
    old_kc = tmp_path / "old.kubeconfig"
    old_kc.write_text(out)
    server = next(line.split()[-1] for line in out.splitlines() if line.strip().startswith("server:"))
    await run_kubectl(kubectl, old_kc, "apply", "-f", "-", stdin=WEB_DEPLOYMENT)
    await wait_web_synced(sc, old_kc, key, pods=1)
    pids = _pids(app, key)

    # On request: the command returns once the tenant reports it; every process was restarted.
    rc, out, err = await app.cli("rotate-certs", f"{ns}/certs", "--timeout", "120")
    assert rc == 0, err
    assert "renewed on request" in out, out
    asked = x509.load_pem_x509_certificate((pki / "apiserver.crt").read_bytes())
    assert asked.serial_number != first.serial_number
    served = await trio.to_thread.run_sync(_served_certificate, server)
    assert served.serial_number == asked.serial_number, "the apiserver serves the renewed certificate"
    now_pids = _pids(app, key)
    assert all(now_pids[name] != pid for name, pid in pids.items()), (pids, now_pids)

    # On schedule: renewed again at 80 % of the new validity, without being asked.
    async def scheduled() -> str | None:
        vc = await _vc(sc, ns, "certs")
        cond = next((c for c in vc["status"].get("conditions", []) if c["type"] == "CertificatesValid"), None)
        return cond["message"] if cond and "of their validity" in cond["message"] else None

    note = await wait_for(scheduled, timeout=2 * LIFETIME, what="a scheduled renewal")
    assert "valid until" in str(note)

    # The first certificates have expired by now: whoever still used them would fail.
    async def expired() -> bool:
        return dt.datetime.now(dt.UTC) > first.not_valid_after_utc + dt.timedelta(seconds=2)

    await wait_for(expired, timeout=2 * LIFETIME, what="the first certificates to expire")
    refused = await run_kubectl(kubectl, old_kc, "get", "ns", check=False)
    assert refused.returncode != 0 and "Unauthorized" in refused.stderr + refused.stdout, refused

    rc, out, err = await app.cli("kubeconfig", f"{ns}/certs")
    assert rc == 0, err
    new_kc = tmp_path / "new.kubeconfig"
    new_kc.write_text(out)
    # The tenant's KCM makes the Pods, the syncer copies them down and their status up.
    async def scaled() -> bool:  # a later renewal may be restarting the apiserver right now
        out = await run_kubectl(kubectl, new_kc, "scale", "deployment", "web", "--replicas=3", check=False)
        return out.returncode == 0

    await wait_for(scaled, timeout=60, what="kubectl scale with the renewed admin kubeconfig")
    await wait_web_synced(sc, new_kc, key, pods=3)
    events = await run_kubectl(kubectl, skc, "get", "events", "-n", ns, "--field-selector",
                               "involvedObject.name=certs,reason=CertificatesRenewed", "-o", "name")
    assert len(events.stdout.split()) >= 1
    # The syncer switched certificates before the old ones expired: it never lost the tenant.
    unhealthy = await run_kubectl(kubectl, skc, "get", "events", "-n", ns, "--field-selector",
                                  "involvedObject.name=certs,reason=ClusterUnHealth", "-o", "name")
    assert not unhealthy.stdout.strip(), "renewals must not interrupt syncing"
    assert "using its renewed client certificate" in app.log.read_text()

