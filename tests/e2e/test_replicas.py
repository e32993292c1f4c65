"""Three real appliance processes share six import-mode tenants through Leases (issue 9).

Each tenant is served by exactly one replica: its Lease names one holder, that replica's
syncer has it registered, and the super objects it creates carry that replica's field
manager (the API server names managers after the user agent `vc-appliance@<identity>`).
A SIGKILLed replica's tenants move once its Leases expire; a SIGTERMed replica hands its
tenants over at once. A full comparison of tenant and super Pods ends the test.
"""

from __future__ import annotations

import base64
import contextlib
import os
import signal
import ssl
import sys
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import yaml

from appliance import config
from appliance.controlplane import cluster
from appliance.kube import creds as kcreds
from appliance.kube import errors, resources
from appliance.kube.client import ApiClient, open_client
from appliance.replicas import lease
from appliance.util import naming
from tests.e2e.appliance_proc import Appliance, running
from tests.integration.syncing import apply_crds, super_client
from tests.testbed import SuperCluster, TenantFactory, run_kubectl, wait_for

pytestmark = pytest.mark.scaleout

MANIFEST = Path(__file__).resolve().parents[2] / "configs" / "deployment.yaml"
TENANTS = 6
LEASE_DURATION, RETRY_PERIOD = 15.0, 2.0
#: scheduling slack on a loaded 2-core machine, on top of what the protocol allows
SLACK = 6.0


def _manager(obj: dict[str, Any]) -> set[str]:
    return {f["manager"] for f in obj["metadata"].get("managedFields") or []
            if str(f.get("manager", "")).startswith("vc-appliance@")}


class Bed:
    def __init__(self, superc: ApiClient, ns: str, lease_ns: str) -> None:
        self.superc, self.ns, self.lease_ns = superc, ns, lease_ns
        self.tenants: dict[str, ApiClient] = {}  # VC name → tenant client
        self.pki: dict[str, Path] = {}  # VC name → its control plane's PKI directory

    async def holders(self) -> dict[str, str]:
        """VC name → holder of its tenant Lease ("" if free or missing)."""
        out = {}
        for name in self.tenants:
            try:
                obj = await self.superc.get(resources.LEASES, lease.tenant_lease_name((self.ns, name)),
                                            namespace=self.lease_ns)
            except errors.NotFound:
                out[name] = ""
                continue
            out[name] = lease.record(obj).holder
        return out

    async def super_pods(self) -> list[dict[str, Any]]:
        selector = f"{naming.LABEL_VC_NAMESPACE}={self.ns}"
        return (await self.superc.list(resources.PODS, label_selector=selector)).items

    async def create_pod(self, vc: str, name: str) -> None:
        await self.tenants[vc].create(resources.PODS, {
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default"},
            "spec": {"automountServiceAccountToken": False, "containers": [{"name": "c", "image": "busybox"}]},
        }, namespace="default")

    async def synced_by(self, vc: str, name: str) -> set[str] | None:
        """The field managers of the tenant Pod's super copy, once it exists."""
        for pod in await self.super_pods():
            m = pod["metadata"]
            if m["labels"].get(naming.LABEL_VC_NAME) == vc and m["name"] == name:
                return _manager(pod)
        return None

    async def full_comparison(self) -> int:
        """Every tenant Pod has exactly one super copy with its uid; nothing else exists."""
        expected = Counter()
        for vc, client in self.tenants.items():
            for pod in (await client.list(resources.PODS, namespace="default")).items:
                expected[(vc, pod["metadata"]["name"], pod["metadata"]["uid"])] += 1
        actual = Counter()
        for pod in await self.super_pods():
            m = pod["metadata"]
            actual[(m["labels"][naming.LABEL_VC_NAME], m["name"], m["annotations"][naming.ANNOTATION_UID])] += 1
        assert actual == expected, f"missing {expected - actual}, unexpected {actual - expected}"
        return sum(expected.values())


async def _syncer_tenants(app: Appliance) -> int:
    text = (await app.get("/metrics")).text
    for line in text.splitlines():
        if line.startswith("syncer_tenants "):
            return int(float(line.split()[1]))
    raise AssertionError("no syncer_tenants gauge")


async def test_three_replicas_share_tenants_and_hand_over(
    tmp_path: Path, super_cluster: SuperCluster, tenant_factory: TenantFactory,
) -> None:
    sc, run = super_cluster, uuid.uuid4().hex[:8]
    ns, lease_ns, cv = f"rep-{run}", f"leases-{run}", f"cv-rep-{run}"
    await apply_crds(sc)  # the VirtualClusters exist before any appliance would install the CRDs
    async with super_client(sc) as superc, contextlib.AsyncExitStack() as stack:
        bed = Bed(superc, ns, lease_ns)
        await superc.create(resources.NAMESPACES, {"metadata": {"name": ns}})
        stack.push_async_callback(_cleanup, superc, ns, lease_ns, cv)
        await superc.create(resources.CLUSTERVERSIONS, {
            "apiVersion": "tenancy.x-k8s.io/v1alpha1", "kind": "ClusterVersion",
            "metadata": {"name": cv}, "spec": {}})
        for i in range(TENANTS):
            cp: cluster.ControlPlane = await tenant_factory(f"rep{i}", controller_manager=False)
            data = cp.admin_kubeconfig.read_bytes()
            client = await stack.enter_async_context(open_client(kcreds.parse_kubeconfig(data)))
            with contextlib.suppress(errors.AlreadyExists):  # no KCM in these tenants
                await client.create(resources.SERVICEACCOUNTS, {"metadata": {"name": "default"}}, namespace="default")
            bed.tenants[f"t{i}"] = client
            bed.pki[f"t{i}"] = cp.pki_dir
            await superc.create(resources.VIRTUALCLUSTERS, {
                "apiVersion": "tenancy.x-k8s.io/v1alpha1", "kind": "VirtualCluster",
                "metadata": {"name": f"t{i}", "namespace": ns, "labels": {"e2e": run}, "annotations": {
                    "tenancy.x-k8s.io/provisioner": "import",
                    naming.ANNOTATION_ADMIN_KUBECONFIG: base64.b64encode(data).decode()}},
                "spec": {"clusterVersionName": cv, "clusterDomain": "cluster.local"},
            }, namespace=ns)

        apps: dict[str, Appliance] = {}
        for ident in ("replica-a", "replica-b", "replica-c"):
            (tmp_path / ident).mkdir()
            env = {"VCA_LEASES_ENABLED": "true", "VCA_LEASES_IDENTITY": ident, "VCA_LEASES_NAMESPACE": lease_ns}
            apps[ident] = await stack.enter_async_context(running(
                sc, tmp_path / ident, extra=f'tenant-selector = "e2e={run}"\n', env=env,
                data_dir=tmp_path / ident / "data"))

        async def balanced() -> dict[str, str] | None:
            holders = await bed.holders()
            counts = Counter(holders.values())
            if "" in counts or sorted(counts.values()) != [2, 2, 2]:
                return None
            for ident, app in apps.items():  # each syncer serves just what its Leases say
                if await _syncer_tenants(app) != counts[ident]:
                    return None
            return holders

        holders: dict[str, str] = await wait_for(balanced, timeout=120, what="2 tenants per replica")  # type: ignore[assignment]

        # Every tenant is synced by its holder, and only by it.
        for vc in bed.tenants:
            await bed.create_pod(vc, "before")
        for vc, holder in holders.items():
            managers = await wait_for(lambda vc=vc: bed.synced_by(vc, "before"), timeout=90, what=f"{vc}/before")
            assert managers == {f"vc-appliance@{holder}"}, (vc, managers)
        await _status_shows(apps["replica-a"], ns, lease_ns, holders)
        await _every_proxy_serves_every_tenant(apps, bed)

        # SIGKILL: the others take its tenants once the Leases expire.
        victim = "replica-a"
        orphaned = sorted(vc for vc, h in holders.items() if h == victim)
        apps[victim].proc.send_signal(signal.SIGKILL)
        killed_at = trio.current_time()

        async def taken_over() -> dict[str, str] | None:
            now = await bed.holders()
            return now if all(now[vc] not in ("", victim) for vc in orphaned) else None

        holders = await wait_for(taken_over, timeout=LEASE_DURATION + RETRY_PERIOD + SLACK + 30,  # type: ignore[assignment]
                                 what="take-over of a killed replica's tenants", interval=0.25)
        takeover = trio.current_time() - killed_at
        print(f"\ntake-over after SIGKILL: {takeover:.1f} s (lease {LEASE_DURATION:g} s + retry {RETRY_PERIOD:g} s)")
        assert takeover <= LEASE_DURATION + RETRY_PERIOD + SLACK, takeover
        for vc in orphaned:
            await bed.create_pod(vc, "after-kill")
            managers = await wait_for(lambda vc=vc: bed.synced_by(vc, "after-kill"), timeout=90,
                                      what=f"{vc}/after-kill")
            assert managers == {f"vc-appliance@{holders[vc]}"}, (vc, managers)

        # SIGTERM: the replica gives its Leases back while stopping; the last one takes them at once.
        leaving, staying = "replica-b", "replica-c"
        handed = sorted(vc for vc, h in holders.items() if h == leaving)
        assert handed, holders
        stopped_at = trio.current_time()
        assert await apps[leaving].stop() == 0

        async def all_with_staying() -> dict[str, str] | None:
            now = await bed.holders()
            return now if set(now.values()) == {staying} else None

        holders = await wait_for(all_with_staying, timeout=60, what="hand-over on SIGTERM", interval=0.25)  # type: ignore[assignment]
        handover = trio.current_time() - stopped_at
        print(f"hand-over after SIGTERM: {handover:.1f} s (stop included)")
        assert handover < LEASE_DURATION, "a graceful stop must not wait for expiry"
        for vc in handed:
            await bed.create_pod(vc, "after-stop")
            managers = await wait_for(lambda vc=vc: bed.synced_by(vc, "after-stop"), timeout=90,
                                      what=f"{vc}/after-stop")
            assert managers == {f"vc-appliance@{staying}"}, (vc, managers)
        assert await _syncer_tenants(apps[staying]) == TENANTS

        checked = await bed.full_comparison()
        print(f"full comparison: {checked} tenant Pods, each with exactly one super copy")
        assert checked == TENANTS + len(orphaned) + len(handed)


async def _every_proxy_serves_every_tenant(apps: dict[str, Appliance], bed: Bed) -> None:
    """A tenant apiserver's kubelet client reaches its Pod's logs through any replica's proxy."""
    for vc, pki in bed.pki.items():
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE  # the proxy's cert is self-made
        ctx.load_cert_chain(pki / "kubelet-client.crt", pki / "kubelet-client.key")
        async with httpx.AsyncClient(verify=ctx, trust_env=False, timeout=20) as c:
            for ident, app in apps.items():
                url = f"https://127.0.0.1:{app.proxy_port}/containerLogs/default/before/c"

                async def answered(url: str = url) -> httpx.Response | None:
                    r = await c.get(url)
                    return r if r.status_code != 404 else None  # the CA is read a moment after Running

                r = await wait_for(answered, timeout=30, what=f"{vc} via {ident}")
                assert r.status_code == 200 and b"hello from kwok" in r.content, (vc, ident, r.status_code, r.text)


async def _status_shows(app: Appliance, ns: str, lease_ns: str, holders: dict[str, str]) -> None:
    """`vc-appliance status` names the holder of each tenant and the live replicas."""
    out = await trio.run_process([sys.executable, "-m", "appliance", "status", "--config", str(app.config)],
                                 capture_stdout=True, capture_stderr=True, check=False,
                                 env=dict(os.environ, VCA_LEASES_NAMESPACE=lease_ns))
    assert out.returncode == 0, out.stderr.decode()
    text = out.stdout.decode()
    rows = {line.split()[0]: line for line in text.splitlines() if line.strip()}
    for vc, holder in holders.items():
        row = rows[f"{ns}/{vc}"]
        assert row.split()[3] == holder and row.endswith("held"), (row, text)
    for ident in set(holders.values()):
        assert rows[ident].endswith("live"), text


async def _cleanup(superc: ApiClient, ns: str, lease_ns: str, cv: str) -> None:
    with trio.move_on_after(20, shield=True):
        for vc in (await superc.list(resources.VIRTUALCLUSTERS, namespace=ns)).items:  # no manager left
            with contextlib.suppress(errors.NotFound):
                await superc.patch(resources.VIRTUALCLUSTERS, vc["metadata"]["name"],
                                   {"metadata": {"finalizers": None}}, namespace=ns)
        with contextlib.suppress(errors.NotFound):
            await superc.patch(resources.CLUSTERVERSIONS, cv, {"metadata": {"finalizers": None}})
            await superc.delete(resources.CLUSTERVERSIONS, cv)
        for res, name in ((resources.NAMESPACES, ns), (resources.NAMESPACES, lease_ns)):
            with contextlib.suppress(errors.NotFound):
                await superc.delete(res, name)
        selector = f"{naming.LABEL_VC_NAMESPACE}={ns}"
        for sns in (await superc.list(resources.NAMESPACES, label_selector=selector)).items:
            with contextlib.suppress(errors.NotFound):
                await superc.delete(resources.NAMESPACES, sns["metadata"]["name"])


async def test_deployment_manifest_is_accepted_and_configures_leases(super_cluster: SuperCluster) -> None:
    """configs/deployment.yaml passes the real apiserver's validation, and its env is a valid config."""
    sc = super_cluster
    manifest = MANIFEST
    docs = list(yaml.safe_load_all(await trio.Path(manifest).read_text()))
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    env = {e["name"]: e.get("value", "pod-name-0") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    cfg = config.load(None, env=env)
    assert cfg.leases.enabled and cfg.leases.identity == "pod-name-0" and cfg.manager.provisioner != "process"
    service = next(d for d in docs if d["kind"] == "Service")
    assert cfg.proxy.advertise_address == service["spec"]["clusterIP"]
    async with super_client(sc) as superc:
        with contextlib.suppress(errors.AlreadyExists):  # server-side dry-run needs the namespace
            await superc.create(resources.NAMESPACES, {"metadata": {"name": "vc-appliance-system"}})
    async def dry_run() -> str | None:
        out = await run_kubectl(sc.kubectl, sc.kubeconfig, "apply", "--dry-run=server", "-f", str(manifest),
                                check=False)
        if out.returncode != 0 and "is not in the valid range" in out.stderr:
            # With tenant ServiceCIDRs next to the default one, kube-apiserver v1.37.2 now and
            # then refuses a fixed ClusterIP of the default range, naming another CIDR as the
            # valid one; the same request succeeds when repeated. Not the manifest's fault.
            return None
        assert out.returncode == 0, out.stderr
        return out.stdout

    stdout = await wait_for(dry_run, timeout=30, what="a server-side dry run of the manifest", interval=0.5)
    assert "deployment.apps/vc-appliance created (server dry run)" in str(stdout), stdout
