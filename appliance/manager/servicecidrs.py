"""A Service range per tenant, registered in the super cluster, so tenant ClusterIPs work there.

A tenant apiserver allocates ClusterIPs from its own `--service-cluster-ip-range`; the super
cluster routes only addresses of its ServiceCIDRs. When a tenant's range is also a super
ServiceCIDR (`vc-<cluster key>`, labelled with the key) and no other tenant shares it, the
syncer can create each super Service with the very ClusterIP the tenant allocated: a tenant
Pod dialling what `kubectl get svc` shows in its cluster reaches its Service, as upstream's
conformance tests and users expect. A VirtualCluster's own `spec.serviceCidr` is registered
when it overlaps no ServiceCIDR already present; without one, a range is cut from a pool
(`DEFAULT_POOL`, /20 each: 4094 Services per tenant, 256 tenants) that overlaps none.

Two managers (replicas owning different tenants) may pick the same free range at once: after
creating its ServiceCIDR each one lists again, and the younger of two overlapping ranges
(creation time, then name) is deleted and picked anew. A super cluster without the
ServiceCIDR API (before Kubernetes 1.33), or a full pool, leaves the tenant on the default
range, whose Services the syncer gives super-allocated addresses as before.
`pick_free` and `overlapping_rivals` are pure.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable, Mapping
from typing import Any, Final

import trio

from appliance.kube import errors, resources
from appliance.kube.client import ApiClient
from appliance.util import naming, tenancy

log = logging.getLogger(__name__)

DEFAULT_POOL: Final = "10.64.0.0/12"
DEFAULT_PREFIX: Final = 20
_ATTEMPTS: Final = 4
_PICKING = trio.Lock()


def _ranges(obj: Mapping[str, Any]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    out = []
    for text in (obj.get("spec") or {}).get("cidrs") or ():
        try:
            out.append(ipaddress.ip_network(text, strict=False))
        except ValueError:
            continue
    return out


def pick_free(pool: str, prefix: int, taken: Iterable[Mapping[str, Any]]) -> str | None:
    """The first /`prefix` subnet of `pool` that overlaps no range of the ServiceCIDRs `taken`."""
    used = [r for obj in taken for r in _ranges(obj)]
    for candidate in ipaddress.ip_network(pool).subnets(new_prefix=prefix):
        if not any(candidate.overlaps(r) for r in used if r.version == candidate.version):
            return str(candidate)
    return None


def _age(obj: Mapping[str, Any]) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return (str(meta.get("creationTimestamp") or ""), str(meta.get("name") or ""))


def overlapping_rivals(mine: Mapping[str, Any], others: Iterable[Mapping[str, Any]]) -> list[str]:
    """Names of ServiceCIDRs older than `mine` whose ranges overlap it (it must then yield)."""
    ranges = _ranges(mine)
    name = (mine.get("metadata") or {}).get("name")
    return [str(o["metadata"]["name"]) for o in others
            if o["metadata"]["name"] != name and _age(o) < _age(mine)
            and any(a.overlaps(b) for a in ranges for b in _ranges(o) if a.version == b.version)]


def body(cluster_key: tenancy.ClusterKey, cidr: str) -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1", "kind": "ServiceCIDR",
        "metadata": {"name": naming.service_cidr_name(cluster_key), "labels": {naming.LABEL_CLUSTER: cluster_key}},
        "spec": {"cidrs": [cidr]},
    }


async def ensure(client: ApiClient, cluster_key: tenancy.ClusterKey, *, requested: str = "", pool: str = DEFAULT_POOL,
                 prefix: int = DEFAULT_PREFIX) -> str | None:
    """The tenant's registered range, registering one first: `requested` (the VirtualCluster's
    `spec.serviceCidr`) if it overlaps no other ServiceCIDR, else a free one of the pool when
    nothing was requested. None when the super cluster cannot take one (no ServiceCIDR API,
    not allowed, the requested range taken, the pool full)."""
    try:
        async with _PICKING:  # tenants of this manager pick one at a time; replicas race (see above)
            return await _ensure(client, cluster_key, requested=requested, pool=pool, prefix=prefix)
    except (errors.NotFound, errors.Forbidden, errors.BadRequest, errors.Invalid) as exc:
        # NotFound from a list: the API itself is missing (a super cluster before Kubernetes 1.33).
        log.warning("tenant %s: no Service range of its own in the super cluster (%s); its Services get "
                    "super-allocated addresses", cluster_key, exc)
        return None


async def _ensure(client: ApiClient, cluster_key: tenancy.ClusterKey, *, requested: str, pool: str, prefix: int) -> str | None:
    name = naming.service_cidr_name(cluster_key)
    for _ in range(_ATTEMPTS):
        cidrs = await _list(client)
        current = next((c for c in cidrs if c["metadata"]["name"] == name), None)
        if current is not None:
            if current["metadata"].get("deletionTimestamp"):
                # Ours after yielding to a rival, or an earlier tenant's of this key: the super
                # cluster drops it once no Service holds an address of it (at once when none does).
                if not await _gone(client, name):
                    return None
                continue
            rivals = overlapping_rivals(current, cidrs)
            if not rivals:
                return str(current["spec"]["cidrs"][0])
            log.info("tenant %s: ServiceCIDR %s overlaps older %s; picking another range", cluster_key, name, rivals)
            await _delete(client, name)
            continue
        if requested:
            net = ipaddress.ip_network(requested, strict=False)
            cidr = pick_free(str(net), net.prefixlen, cidrs)
            if cidr is None:
                log.info("tenant %s: its Service range %s overlaps a ServiceCIDR of the super cluster; its "
                         "Services get super-allocated addresses", cluster_key, requested)
                return None
        else:
            cidr = pick_free(pool, prefix, cidrs)
            if cidr is None:
                log.warning("tenant %s: no free /%d left in the tenant Service pool %s", cluster_key, prefix, pool)
                return None
        try:
            await client.create(resources.SERVICECIDRS, body(cluster_key, cidr))
        except errors.AlreadyExists:
            pass  # another replica was quicker: read it on the next pass
    return None


async def _gone(client: ApiClient, name: str, *, within: float = 15.0) -> bool:
    with trio.move_on_after(within):
        while True:
            try:
                await client.get(resources.SERVICECIDRS, name)
            except errors.NotFound:
                return True
            await trio.sleep(0.25)
    return False


async def _list(client: ApiClient) -> list[dict[str, Any]]:
    return (await client.list(resources.SERVICECIDRS)).items


async def _delete(client: ApiClient, name: str) -> None:
    try:
        await client.delete(resources.SERVICECIDRS, name)
    except errors.NotFound:
        pass


async def release(client: ApiClient, cluster_key: tenancy.ClusterKey) -> None:
    """Delete the tenant's ServiceCIDR; the super cluster keeps it until its last Service is gone."""
    try:
        await _delete(client, naming.service_cidr_name(cluster_key))
    except (errors.Forbidden, errors.BadRequest):
        pass
