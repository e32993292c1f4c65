"""Tenant service-account tokens for super Pods.

A tenant Pod mounts a projected `kube-api-access-*` volume that its own kubelet would
fill with a token from the *tenant* apiserver. The super kubelet would fill it from the
super apiserver instead, so the syncer asks the tenant apiserver for a token
(TokenRequest for the Pod's service account, bound to the tenant Pod, with an expiry)
and stores it with the tenant CA and namespace in a super Secret that replaces the
projected volume. Every other `serviceAccountToken` projection of the Pod (a token for
Vault, say, with its own audience and expiry) gets its own TokenRequest, stored under
its key in the same Secret (`mutation.token_projections`). The patrol refreshes them all
when 80 % of the shortest lifetime has passed. The Secret is owned by the super Pod
(ownerReference), so it goes away with it.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
from typing import Any

from appliance.kube import errors, resources
from appliance.syncer import mutation
from appliance.syncer.context import SyncContext
from appliance.syncer.tenant import Tenant
from appliance.util import naming

#: Annotations of our own (not the tenancy domain: tenants' keys there are stripped).
ANNOTATION_TOKEN_POD = "vc-appliance.x-k8s.io/token-for-pod"
ANNOTATION_TOKEN_EXPIRES = "vc-appliance.x-k8s.io/token-expires"
ANNOTATION_TOKEN_ISSUED = "vc-appliance.x-k8s.io/token-issued"


def secret_name(pod_name: str, pod_uid: str) -> str:
    """A stable Secret name per tenant Pod incarnation, within the 253-character limit."""
    suffix = hashlib.sha256(pod_uid.encode()).hexdigest()[:8]
    return f"{pod_name[:230]}-vctoken-{suffix}"


def needs_refresh(secret: dict[str, Any] | None, now: dt.datetime) -> bool:
    """True when the token is missing or 80 % of its lifetime has passed (pure)."""
    if secret is None:
        return True
    ann = (secret.get("metadata") or {}).get("annotations") or {}
    try:
        issued = dt.datetime.fromisoformat(ann[ANNOTATION_TOKEN_ISSUED])
        expires = dt.datetime.fromisoformat(ann[ANNOTATION_TOKEN_EXPIRES])
    except (KeyError, ValueError):
        return True
    return now >= issued + (expires - issued) * 0.8


def tenant_ca(tenant: Tenant, namespace: str) -> str | None:
    cm = tenant.get("configmap", "kube-root-ca.crt", namespace) if "configmap" in tenant.informers else None
    return ((cm or {}).get("data") or {}).get("ca.crt")


def has_token_volume(vpod: dict[str, Any]) -> bool:
    """Whether the tenant Pod has the automatic `kube-api-access-*` token volume."""
    return any(
        v.get("name", "").startswith(mutation.TOKEN_VOLUME_PREFIX) and v.get("projected")
        for v in (vpod.get("spec") or {}).get("volumes") or ()
    )


def needs_tokens(vpod: dict[str, Any]) -> bool:
    """Whether the tenant Pod mounts any service-account token (automatic or projected)."""
    return has_token_volume(vpod) or bool(mutation.token_projections(vpod))


async def request_token(
    sx: SyncContext, tenant: Tenant, vpod: dict[str, Any], *, audience: str | None = None,
    expiration_seconds: int | None = None,
) -> tuple[str, dt.datetime]:
    """A token of the Pod's service account from the tenant apiserver, bound to the tenant Pod."""
    meta, spec = vpod["metadata"], vpod.get("spec") or {}
    sa = spec.get("serviceAccountName") or "default"
    request: dict[str, Any] = {
        "expirationSeconds": expiration_seconds or sx.settings.token_expiration_seconds,
        "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": meta["name"], "uid": meta["uid"]},
    }
    if audience:
        request["audiences"] = [audience]
    body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": request}
    status = (
        await tenant.client.create(
            resources.SERVICEACCOUNTS, body, namespace=meta["namespace"], subresource="token", name=sa
        )
    )["status"]
    expires = dt.datetime.fromisoformat(status["expirationTimestamp"].replace("Z", "+00:00"))
    return status["token"], expires


def build_secret(
    tenant: Tenant, vpod: dict[str, Any], *, data: dict[str, str], issued: dt.datetime, expires: dt.datetime
) -> dict[str, Any]:
    """The super token Secret; `data` maps keys (token, ca.crt, namespace, projected.*) to text."""
    meta = vpod["metadata"]

    def b64(s: str) -> str:
        return base64.b64encode(s.encode()).decode()

    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": secret_name(meta["name"], meta["uid"]),
            "namespace": tenant.id.super_namespace(meta["namespace"]),
            "labels": {naming.LABEL_VC_NAME: tenant.id.vc_name, naming.LABEL_VC_NAMESPACE: tenant.id.vc_namespace},
            "annotations": {
                naming.ANNOTATION_CLUSTER: tenant.key,
                ANNOTATION_TOKEN_POD: meta["name"],
                ANNOTATION_TOKEN_ISSUED: issued.isoformat(),
                ANNOTATION_TOKEN_EXPIRES: expires.isoformat(),
            },
        },
        "data": {key: b64(value) for key, value in data.items()},
    }


async def ensure_secret(sx: SyncContext, tenant: Tenant, vpod: dict[str, Any], *, force: bool = False) -> str:
    """Create or refresh the token Secret of `vpod` in its super namespace; returns its name.

    Raises errors.ApiError from the tenant (TokenRequest) or the super cluster.
    """
    from appliance.syncer.resources.base import Retry

    meta = vpod["metadata"]
    name = secret_name(meta["name"], meta["uid"])
    super_ns = tenant.id.super_namespace(meta["namespace"])
    current = sx.super_cache("secret").get(name, super_ns)
    now = dt.datetime.now(dt.UTC)
    if current is not None and not force and not needs_refresh(current, now):
        return name
    data: dict[str, str] = {}
    expiries: list[dt.datetime] = []
    if has_token_volume(vpod):
        ca = tenant_ca(tenant, meta["namespace"])
        if ca is None:
            raise Retry(f"tenant namespace {meta['namespace']} has no kube-root-ca.crt yet")
        token, expires = await request_token(sx, tenant, vpod)
        data.update(token=token, namespace=meta["namespace"])
        data["ca.crt"] = ca
        expiries.append(expires)
    for projection in mutation.token_projections(vpod):
        token, expires = await request_token(sx, tenant, vpod, audience=projection.audience,
                                             expiration_seconds=projection.expiration_seconds)
        data[projection.key] = token
        expiries.append(expires)
    body = build_secret(tenant, vpod, data=data, issued=now, expires=min(expiries))
    if current is None:
        try:
            await sx.super_client.create(resources.SECRETS, body, namespace=super_ns)
            return name
        except errors.AlreadyExists:
            pass
    await sx.super_client.patch(
        resources.SECRETS, name,
        {"metadata": {"annotations": body["metadata"]["annotations"]}, "data": body["data"]},
        namespace=super_ns,
    )
    return name


async def own_by_pod(sx: SyncContext, secret: str, pod: dict[str, Any]) -> None:
    """Make the super Pod own its token Secret, so the super GC deletes them together."""
    meta = pod["metadata"]
    ref = {"apiVersion": "v1", "kind": "Pod", "name": meta["name"], "uid": meta["uid"]}
    try:
        await sx.super_client.patch(
            resources.SECRETS, secret, {"metadata": {"ownerReferences": [ref]}}, namespace=meta["namespace"]
        )
    except errors.NotFound:
        pass
