"""The tenant supervisor: one nursery per Running VirtualCluster, stopped alone.

It watches VirtualClusters in the super cluster. A VC in phase `Running` whose admin
kubeconfig can be found (annotation `tenancy.x-k8s.io/admin-kubeconfig`, then the
secret named by `tenancy.x-k8s.io/secret.admin-kubeconfig` (key `value`), then secret
`admin-kubeconfig` in its root namespace — the original's order) gets a tenant task;
a VC that is deleted, goes `Error`, changes identity (UID) or changes the annotations that
name its kubeconfig has its task cancelled, stopping before starting (a changed kubeconfig
is therefore used at once, after the same inline-only check). A tenant task opens the tenant client and informers, waits
until they are synced, registers the tenant with the `Syncer`, then probes the tenant
apiserver. Any failure inside it is logged, reported as a `ClusterUnHealth` Event on the
VC and retried with backoff; it never reaches other tenants or the process.
"""

from __future__ import annotations

import base64
import binascii
import logging
import time
from typing import Any, NoReturn

import trio
from cryptography import x509

from appliance import logsetup
from appliance.kube import creds as kcreds
from appliance.kube import errors, resources
from appliance.kube import events as kevents
from appliance.kube import informer as kinformer
from appliance.kube.backoff import Backoff
from appliance.kube.client import ApiClient, open_client
from appliance.replicas.ownership import Ownership
from appliance.syncer import vcstatus
from appliance.syncer.runtime import Syncer
from appliance.syncer.tenant import Tenant, TenantId
from appliance.util import naming, tenancy

log = logging.getLogger(__name__)


class KubeconfigMissing(Exception):
    """No admin kubeconfig for the VC (yet); the message says where we looked."""


async def tenant_credentials(super_client: Any, vc: dict[str, Any], tid: TenantId) -> kcreds.Credentials:
    """Find the tenant's admin kubeconfig in the original's order of sources.

    The annotations count only where `naming.kubeconfig_annotations_apply` says so; every
    source is someone else's writing, so it is parsed as untrusted (inline credentials only).
    """
    ann = vc["metadata"].get("annotations") or {}
    inline, secret_name = naming.kubeconfig_source(ann, (vc.get("status") or {}).get("provisioner"))
    if inline:
        return _untrusted(inline, f"annotation {naming.ANNOTATION_ADMIN_KUBECONFIG}")
    if secret_name:
        name, key = secret_name, naming.ANNOTATED_KUBECONFIG_SECRET_KEY
    else:
        name, key = naming.ADMIN_KUBECONFIG_SECRET, naming.ADMIN_KUBECONFIG_SECRET_KEY
    try:
        secret = await super_client.get(resources.SECRETS, name, namespace=tid.key)
    except errors.NotFound:
        raise KubeconfigMissing(f"secret {tid.key}/{name} not found") from None
    value = (secret.get("data") or {}).get(key)
    if not value:
        raise KubeconfigMissing(f"secret {tid.key}/{name} has no key {key!r}")
    return _untrusted(value, f"secret {tid.key}/{name} key {key}")


def _untrusted(b64: str, where: str) -> kcreds.Credentials:
    try:
        data = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        raise kcreds.KubeconfigError(f"{where} is not valid base64") from None
    return kcreds.parse_untrusted_kubeconfig(data, where=where)


async def run_tenant(
    sx: Syncer, vc: dict[str, Any], *, vc_events: kevents.EventRecorder,
    task_status: trio.TaskStatus[trio.CancelScope] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Keep one tenant synced until cancelled; restarts it after failures, with backoff."""
    tid = TenantId.from_vc(vc)
    logsetup.tenant.set(tid.key)  # stamped on every log line of this tenant's tasks
    backoff = Backoff()
    with trio.CancelScope() as scope:
        task_status.started(scope)
        try:
            await _keep_serving(sx, vc, tid, backoff, vc_events)
        finally:
            sx.health.pop(tid.key, None)


async def _keep_serving(
    sx: Syncer, vc: dict[str, Any], tid: TenantId, backoff: Backoff, vc_events: kevents.EventRecorder
) -> NoReturn:
    """Serve the tenant; after a failure: Event on the VC, backoff, serve again."""
    while True:
        started = trio.current_time()
        try:
            await _serve_tenant(sx, vc, tid)
        except Exception as exc:  # the sanctioned per-tenant catch-all (STYLE rule 20)
            if trio.current_time() - started > 120:
                backoff.reset()  # it had been healthy: this is a new incident
            delay = backoff.next_delay()
            log.warning("tenant %s failed: %s; retrying in %.1f s", tid.key, exc, delay,
                        exc_info=not isinstance(exc, (errors.KubeError, KubeconfigMissing, kcreds.KubeconfigError)))
            if isinstance(exc, (kcreds.KubeconfigError, KubeconfigMissing)):
                reason = "InvalidKubeconfig" if isinstance(exc, kcreds.KubeconfigError) else "KubeconfigMissing"
                await vc_events.post(vc, type="Warning", reason=reason,
                                     message=f"VirtualCluster {tid.key} is not synced: {exc}")
                await vcstatus.set_kubeconfig_condition(sx.super_client, vc, accepted=False, reason=reason,
                                                        message=str(exc))
            else:
                await vc_events.post(vc, type="Warning", reason="ClusterUnHealth",
                                     message=f"VirtualCluster {tid.key} unhealthy: {exc}")
            await trio.sleep(delay)


async def own_service_range(super_client: ApiClient, key: tenancy.ClusterKey) -> str | None:
    """The tenant's ServiceCIDR in the super cluster (`manager/servicecidrs.py`), if it has one."""
    try:
        obj = await super_client.get(resources.SERVICECIDRS, naming.service_cidr_name(key))
    except (errors.NotFound, errors.Forbidden):
        return None
    labels = obj["metadata"].get("labels") or {}
    cidrs = (obj.get("spec") or {}).get("cidrs") or []
    if labels.get(naming.LABEL_CLUSTER) != key or obj["metadata"].get("deletionTimestamp") or not cidrs:
        return None
    return str(cidrs[0])


async def _serve_tenant(sx: Syncer, vc: dict[str, Any], tid: TenantId) -> NoReturn:
    creds = await tenant_credentials(sx.super_client, vc, tid)
    await vcstatus.set_kubeconfig_condition(sx.super_client, vc, accepted=True, reason="InlineCredentials",
                                            message=f"syncing {creds.server}", only_if_present=True)
    async with open_client(creds, user_agent=f"vc-syncer/{tid.key}") as client:
        tenant = Tenant(tid, client, service_cidr=await own_service_range(sx.super_client, tid.key))
        async with trio.open_nursery() as nursery:
            for name, kind in sx.kinds.items():
                tenant.informers[name] = kinformer.Informer(client, kind.resource, name=f"{tid.key}/{name}")
            tenant.informers["node"] = kinformer.Informer(
                client, resources.NODES, label_selector=f"{naming.LABEL_VIRTUAL_NODE}=true",
                name=f"{tid.key}/node",
            )
            with trio.fail_after(120):
                async with trio.open_nursery() as starting:
                    for inf in tenant.informers.values():
                        starting.start_soon(nursery.start, inf.run)
            sx.register(tenant)
            sx.health[tid.key] = True
            renew_at = client_cert_renewal(creds)
            next_probe = trio.current_time() + sx.settings.health_period
            try:
                while True:
                    wake = next_probe
                    if renew_at is not None:  # a short-lived certificate may be due before the probe
                        wake = min(wake, trio.current_time() + max(0.5, renew_at - time.time()))
                    await trio.sleep_until(wake)
                    if renew_at is not None and time.time() >= renew_at:
                        renew_at = await _pick_up_renewal(sx, vc, tid, client)
                    if trio.current_time() >= next_probe:
                        try:
                            await _probe(client, timeout=sx.settings.health_timeout)
                        except BaseException:
                            sx.health[tid.key] = False  # seen by the gauge until the restart
                            raise
                        next_probe = trio.current_time() + sx.settings.health_period
            finally:
                sx.unregister(tid.key)
    raise AssertionError("unreachable")


async def _probe(client: ApiClient, *, timeout: float) -> None:  # noqa: ASYNC109 (a setting, passed on)
    """The tenant apiserver answers `/version` within `timeout`, asked again every second: a
    restart under a certificate renewal or a rollout takes seconds and is not an outage."""
    last: errors.KubeError | None = None
    with trio.move_on_after(timeout):
        while True:
            try:
                await client.server_version()
                return
            except errors.KubeError as exc:
                last = exc
            await trio.sleep(1.0)
    raise last or errors.KubeError(f"no answer from the tenant apiserver within {timeout:g} s")


#: The share of its validity after which the syncer looks for a renewed client certificate;
#: the manager renews at `[manager] certificate-renew-fraction` (0.8), before this.
CLIENT_CERT_CHECK = 0.9


def client_cert_renewal(creds: kcreds.Credentials) -> float | None:
    """When (POSIX time) to look for a renewal of the client certificate, None without one."""
    if not creds.client_cert_pem:
        return None
    try:
        cert = x509.load_pem_x509_certificate(creds.client_cert_pem)
    except ValueError:
        return None
    start, end = cert.not_valid_before_utc.timestamp(), cert.not_valid_after_utc.timestamp()
    return start + (end - start) * CLIENT_CERT_CHECK


async def _pick_up_renewal(sx: Syncer, vc: dict[str, Any], tid: TenantId, client: ApiClient) -> float | None:
    """Use the tenant's renewed client certificate on new connections; when to look again.

    A changed server or CA is not a renewal: the tenant task starts over with them.
    """
    fresh = await tenant_credentials(sx.super_client, vc, tid)
    old = client.creds
    if (fresh.server, fresh.ca_pem) != (old.server, old.ca_pem):
        raise kcreds.KubeconfigError("the tenant's kubeconfig now names another server or CA")
    if fresh.client_cert_pem and fresh.client_key_pem and fresh.client_cert_pem != old.client_cert_pem:
        await client.renew_client_certificate(fresh.client_cert_pem, fresh.client_key_pem)
        log.info("tenant %s: using its renewed client certificate", tid.key)
        return client_cert_renewal(fresh)
    return time.time() + sx.settings.health_period  # not renewed yet: look again next round


def desired(vc: dict[str, Any]) -> bool:
    """Running, not being deleted, and not asleep: a sleeping tenant's apiserver is stopped on
    purpose, and what it made in the super cluster stays untouched until it wakes."""
    status = vc.get("status") or {}
    asleep = any(c.get("type") == "Sleeping" and c.get("status") == "True" for c in status.get("conditions") or [])
    return status.get("phase") == "Running" and not vc["metadata"].get("deletionTimestamp") and not asleep


async def run(
    sx: Syncer, *, label_selector: str | None = None, ownership: Ownership | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Watch VirtualClusters (those matching `label_selector`) and keep one tenant task per
    Running VC that `ownership` grants this replica; a tenant task runs inside its guard."""
    owner = ownership or Ownership()
    vcs = kinformer.Informer(sx.super_client, resources.VIRTUALCLUSTERS, label_selector=label_selector,
                             name="super/virtualclusters")
    vc_events = kevents.EventRecorder(sx.super_client, component="vc-syncer")
    changed = trio.Event()
    #: per tenant: the VC's UID and credential source (`naming.kubeconfig_source`), its task's scope
    running: dict[tenancy.VcRef, tuple[tuple[str, tuple[str, str]], trio.CancelScope]] = {}

    def identity(vc: dict[str, Any]) -> tuple[str, tuple[str, str]]:
        return vc["metadata"]["uid"], naming.kubeconfig_source(
            vc["metadata"].get("annotations") or {}, (vc.get("status") or {}).get("provisioner"))

    def poke(*_: object) -> None:
        changed.set()

    ended: set[trio.CancelScope] = set()

    async def guarded(ref: tenancy.VcRef, vc: dict[str, Any],
                      task_status: trio.TaskStatus[trio.CancelScope]) -> None:
        with trio.CancelScope() as scope:
            task_status.started(scope)
            try:
                with owner.guard(ref):  # fires when this replica loses the tenant's Lease
                    await run_tenant(sx, vc, vc_events=vc_events)
            finally:
                ended.add(scope)  # decide again: the guard (not we) may have ended it
                changed.set()

    vcs.add_handler(poke)
    owner.subscribe(poke)
    async with trio.open_nursery() as nursery:
        await nursery.start(vcs.run)
        task_status.started()
        while True:
            changed = trio.Event()  # before reading: a change from now on wakes us again
            refs = {tenancy.VcRef(vc["metadata"]["namespace"], vc["metadata"]["name"]): vc for vc in vcs.list() if desired(vc)}
            want = {ref: vc for ref, vc in refs.items() if owner.holds(ref)}
            for ref, (ident, scope) in list(running.items()):  # stop before start
                vc = want.get(ref)
                if scope in ended:
                    ended.discard(scope)
                    del running[ref]
                elif vc is None or identity(vc) != ident:
                    why = "" if vc is None or identity(vc)[0] != ident[0] else " (its kubeconfig source changed)"
                    log.info("tenant %s/%s: stopping%s", *ref, why)
                    scope.cancel()
                    del running[ref]
            ended.intersection_update(scope for _, scope in running.values())
            for ref, vc in want.items():
                if ref not in running:
                    log.info("tenant %s/%s: starting", *ref)
                    scope = await nursery.start(guarded, ref, vc)
                    running[ref] = (identity(vc), scope)
            await changed.wait()
    raise AssertionError("unreachable")
