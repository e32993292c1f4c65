"""The `native` provisioner: the original's control plane as StatefulSets in the root namespace.

Order, as in the original: root namespace; an apiserver Service of type ClusterIP first (its
IP goes into the certificate and the kubeconfigs); the PKI secrets (root CA reused if the
`root-ca` secret exists, everything else issued afresh); then etcd, apiserver and
controller-manager one after another, each server-side applied (field manager
`virtualcluster/provisioner/native`, forced) and waited for until
`status.readyReplicas == spec.replicas`. The worker's deadline bounds the whole attempt; the
timeout message names the component still not ready. The ClusterVersion gets the finalizer
`clusterVersion.finalizers` (removed by the controller when the ClusterVersion is deleted).
Deleting the root namespace removes everything this provisioner made.
"""

from __future__ import annotations

import logging
from typing import Any

import trio

from appliance.kube import errors, resources
from appliance.kube.client import ApiClient
from appliance.manager import pkisecrets, reconcile, rootns
from appliance.manager.provision import templates
from appliance.manager.provision.base import Context, ManagedTenant
from appliance.util import naming

logger = logging.getLogger(__name__)

FIELD_MANAGER = "virtualcluster/provisioner/native"
READY_POLL = 1.0


def is_ready(sts: dict[str, Any]) -> bool:
    """The original's readiness rule: every wanted replica reports ready."""
    wanted = int((sts.get("spec") or {}).get("replicas", 1))
    return int((sts.get("status") or {}).get("readyReplicas") or 0) == wanted


async def wait_ready(client: ApiClient, namespace: str, name: str) -> None:
    """Return once StatefulSet `namespace/name` is ready; the caller sets the deadline."""
    while True:
        try:
            if is_ready(await client.get(resources.STATEFULSETS, name, namespace=namespace)):
                return
        except errors.NotFound:
            pass
        await trio.sleep(READY_POLL)


async def add_cluster_version_finalizer(client: ApiClient, cv: dict[str, Any]) -> None:
    """Put `clusterVersion.finalizers` on the ClusterVersion (conditional on its resourceVersion)."""
    meta = cv.get("metadata") or {}
    finalizers = list(meta.get("finalizers") or [])
    if naming.CLUSTER_VERSION_FINALIZER in finalizers or meta.get("deletionTimestamp"):
        return
    patch = {"metadata": {"finalizers": [*finalizers, naming.CLUSTER_VERSION_FINALIZER],
                          "resourceVersion": meta.get("resourceVersion")}}
    try:
        await client.patch(resources.CLUSTERVERSIONS, meta["name"], patch)
    except (errors.Conflict, errors.NotFound):
        pass  # the next reconcile sees the fresh object


class NativeProvisioner:
    name = "native"

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx

    async def provision(self, t: ManagedTenant) -> str:
        client = self._ctx.super
        cv = t.cluster_version
        if cv is None:
            raise reconcile.Rejected(
                "ClusterVersionNotFound", f"desired ClusterVersion {t.vc.spec.cluster_version_name} not found"
            )
        found = templates.bundles(cv)
        etcd = templates.by_name(found, templates.ETCD)
        api = templates.by_name(found, templates.APISERVER)
        assert etcd is not None  # bundles() guarantees etcd and apiserver
        assert api is not None
        ns = t.key
        await add_cluster_version_finalizer(client, cv)
        t.progress = "creating the root namespace"
        await rootns.ensure_root_namespace(client, t.vc, ns)

        cluster_ip = ""
        api_service_applied = False
        if api.service is not None and api.service_type == "ClusterIP":
            t.progress = "applying the apiserver Service"
            live = await rootns.apply(client, resources.SERVICES, templates.render_service(api, ns) or {},
                                      manager=FIELD_MANAGER)
            ip = str((live.get("spec") or {}).get("clusterIP") or "")
            cluster_ip = "" if ip in ("", "None") else ip
            api_service_applied = True

        t.progress = "issuing certificates"
        stored = await rootns.read_secrets(client, ns, (pkisecrets.SECRET_ROOT_CA,))
        root_ca = pkisecrets.secret_cert(stored.get(pkisecrets.SECRET_ROOT_CA))
        external = t.vc.metadata.labels.get(naming.LABEL_EXTERNAL_APISERVER_DOMAIN, "")
        req = pkisecrets.PKIRequest(
            cluster_key=ns, vc_name=t.vc.metadata.name, cluster_domain=t.vc.spec.cluster_domain,
            apiserver_dns=(f"{api.service_name}.{ns}", external),
            apiserver_ips=(cluster_ip,) if cluster_ip else (),
            etcd_dns=templates.etcd_dns_names(etcd, ns),
            days=t.vc.spec.pki_expire_days or pkisecrets.DEFAULT_DAYS,
        )
        pki = await trio.to_thread.run_sync(lambda: pkisecrets.build(req, root_ca=root_ca))
        server = templates.apiserver_server(api, ns, cluster_ip)
        for secret in pkisecrets.secrets(pki, namespace=ns, server=server, cluster_name=t.vc.metadata.name):
            await rootns.apply(client, resources.SECRETS, secret)
        cm_kubeconfig = pkisecrets.render_kubeconfig(
            pki, user=pkisecrets.CONTROLLER_MANAGER_USER, server=server, cluster_name=t.vc.metadata.name
        )

        for bundle in found:
            t.progress = f"applying {ns}/{bundle.name}"
            hashes = templates.cert_hashes(bundle.name, pki, cm_kubeconfig=cm_kubeconfig)
            sts = templates.render_statefulset(bundle, ns, annotations=hashes)
            svc = templates.render_service(bundle, ns)
            await rootns.apply(client, resources.STATEFULSETS, sts, manager=FIELD_MANAGER)
            if svc is not None and not (bundle is api and api_service_applied):
                await rootns.apply(client, resources.SERVICES, svc, manager=FIELD_MANAGER)
            t.progress = f"waiting for {ns}/{bundle.name} to be ready"
            await wait_ready(client, ns, bundle.name)
            logger.info("tenant %s: %s is ready", ns, bundle.name)
        return "tenant control plane is running"

    async def ensure(self, t: ManagedTenant) -> None:
        """Nothing to adopt: the StatefulSets run in the super cluster on their own."""

    async def maintain(self, t: ManagedTenant) -> float | None:
        """Not yet: native tenants' certificates are renewed by re-creating the VirtualCluster."""
        return None

    async def teardown(self, t: ManagedTenant) -> None:
        """Nothing outside the root namespace, whose deletion removes the rest."""
