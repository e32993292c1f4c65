"""Tenant RuntimeClasses, copied to the super cluster for the Pods that name them.

A tenant Pod with `runtimeClassName: X` is admitted by its own apiserver against its own
RuntimeClass X (which fills in `spec.overhead`); the super cluster admits the super Pod only
against a super RuntimeClass of that name with the same overhead. So the first Pod naming X
makes a super copy `<cluster key>-X` (`naming.super_runtime_class`: handler, overhead and
scheduling as the tenant wrote them, labelled with the tenant's key) and the super Pod names
that copy. RuntimeClass handler and overhead are immutable, so a copy is created once and
replaced only when the tenant recreated X differently. `[syncer] runtime-handlers` limits
the handlers a tenant may use (a handler picks a runtime the node admin installed, e.g. a
less isolated one); a Pod naming another gets a Warning Event and is not synced. The copies
go with the tenant (the manager deletes cluster objects labelled with its key).
`super_copy` and `same_copy` are pure.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from typing import Any

from appliance.kube import errors, resources
from appliance.syncer.context import SyncContext
from appliance.syncer.resources.base import Permanent, Retry
from appliance.syncer.tenant import Tenant
from appliance.util import naming, tenancy

log = logging.getLogger(__name__)

_CONTENT = ("handler", "overhead", "scheduling")


def super_copy(cluster_key: tenancy.ClusterKey, tenant_rc: Mapping[str, Any]) -> dict[str, Any]:
    """The super RuntimeClass for a tenant's (pure)."""
    name = tenant_rc["metadata"]["name"]
    body: dict[str, Any] = {
        "apiVersion": "node.k8s.io/v1", "kind": "RuntimeClass",
        "metadata": {"name": naming.super_runtime_class(cluster_key, name),
                     "labels": {naming.LABEL_CLUSTER: cluster_key},
                     "annotations": {naming.ANNOTATION_CLUSTER: cluster_key, naming.ANNOTATION_NAMESPACE: "",
                                     naming.ANNOTATION_RUNTIME_CLASS: name}},
    }
    body.update({k: copy.deepcopy(tenant_rc[k]) for k in _CONTENT if tenant_rc.get(k) is not None})
    return body


def same_copy(have: Mapping[str, Any], want: Mapping[str, Any]) -> bool:
    return all(have.get(k) == want.get(k) for k in _CONTENT)


async def ensure(sx: SyncContext, tenant: Tenant, name: str) -> str:
    """The name of the super copy of tenant RuntimeClass `name`, made if missing.

    Raises Permanent (the tenant gets a Warning) for a missing class, a handler the settings do
    not allow, or a name taken by someone else; Retry after replacing a stale copy.
    """
    try:
        tenant_rc = await tenant.client.get(resources.RUNTIMECLASSES, name)
    except errors.NotFound:
        raise Permanent(f"RuntimeClass {name} does not exist in this cluster") from None
    allowed = sx.settings.runtime_handlers
    if allowed and tenant_rc.get("handler") not in allowed:
        raise Permanent(f"RuntimeClass {name} uses handler {tenant_rc.get('handler')!r}, which this appliance "
                        f"does not allow (allowed: {', '.join(allowed)})")
    want = super_copy(tenant.key, tenant_rc)
    super_name = want["metadata"]["name"]
    try:
        await sx.super_client.create(resources.RUNTIMECLASSES, want)
        log.info("tenant %s: RuntimeClass %s copied to the super cluster as %s", tenant.key, name, super_name)
        return str(super_name)
    except errors.AlreadyExists:
        have = await sx.super_client.get(resources.RUNTIMECLASSES, super_name)
    if (have["metadata"].get("labels") or {}).get(naming.LABEL_CLUSTER) != tenant.key:
        raise Permanent(f"RuntimeClass {super_name} exists in the super cluster and is not this tenant's")
    if same_copy(have, want):
        return str(super_name)
    await sx.super_client.delete(resources.RUNTIMECLASSES, super_name, uid=have["metadata"]["uid"])
    raise Retry(f"tenant RuntimeClass {name} changed; replaced its super copy {super_name}")
