"""Tenant ClusterTrustBundles for the Pods that project them.

A `clusterTrustBundle` projection is resolved by the kubelet against the ClusterTrustBundles
of *its* cluster, which for a super Pod is the super cluster: it would find none of the
tenant's (or, worse, another party's of the same signer). So `mutation` turns each such source
into a ConfigMap source, and before the super Pod is created `ensure` fills that ConfigMap
(`vc-ctb-<hash of the selection>` in the Pod's super namespace) with what the kubelet would
have written: the selected bundles' certificates, deduplicated, re-encoded as plain PEM. The
ConfigMap has the bundle under `bundle.pem` only when something matched (a non-optional
source then blocks the Pod, as the kubelet blocks it) and under `or-empty.pem` always.

The ConfigMaps carry the tenant's cluster label but no tenancy annotations: they have no tenant
object, so the patrol must not take them for orphans; they go with their namespace. A tenant
ConfigMap cannot collide with them in practice (the hash suffix), and one that did would be
overwritten on the next Pod that needs the name. They are refreshed whenever a Pod using them
is created or re-synced; unlike the kubelet's projection they do not follow later edits of a
bundle until then. `selector_string`, `pem_certificates` and `configmap_data` are pure.
"""

from __future__ import annotations

import base64
import json
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from appliance.kube import errors, resources
from appliance.syncer import mutation
from appliance.syncer.context import SyncContext
from appliance.syncer.tenant import Tenant
from appliance.util import naming

log = logging.getLogger(__name__)

_PEM_BLOCK = re.compile(
    rb"-----BEGIN ([^\r\n-]+)-----\r?\n(.*?)\r?\n?-----END \1-----", re.DOTALL)
ANNOTATION_SELECTION = "tenancy.x-k8s.io/trust-bundle-selection"


class NothingMatches(Exception):
    """A label selector that can match no object (nil selector in the projection)."""


def selector_string(selector: Mapping[str, Any] | None) -> str:
    """A LabelSelector as the `labelSelector` query string (pure). None matches nothing."""
    if selector is None:
        raise NothingMatches
    terms = [f"{k}={v}" for k, v in sorted((selector.get("matchLabels") or {}).items())]
    for expr in selector.get("matchExpressions") or ():
        key, op, values = expr["key"], expr["operator"], sorted(expr.get("values") or ())
        if op == "In":
            terms.append(f"{key} in ({','.join(values)})")
        elif op == "NotIn":
            terms.append(f"{key} notin ({','.join(values)})")
        elif op == "Exists":
            terms.append(key)
        elif op == "DoesNotExist":
            terms.append(f"!{key}")
        else:
            raise ValueError(f"label selector operator {op!r} is not one of In, NotIn, Exists, DoesNotExist")
    return ",".join(terms)


def pem_certificates(bundles: Iterable[Mapping[str, Any]]) -> list[bytes]:
    """The DER of every PEM block in the bundles' `spec.trustBundle`, deduplicated, sorted (pure).

    PEM headers (`Key: value` lines before a blank line) and text between blocks are dropped,
    as Go's `pem.Decode` does; the kubelet shuffles the order, we keep a stable one.
    """
    seen: set[bytes] = set()
    for bundle in bundles:
        text = str((bundle.get("spec") or {}).get("trustBundle") or "").encode()
        for match in _PEM_BLOCK.finditer(text):
            body = match[2]
            if b"\n\n" in body or b"\r\n\r\n" in body:  # headers end at the first blank line
                body = re.split(rb"\r?\n\r?\n", body, maxsplit=1)[1]
            try:
                seen.add(base64.b64decode(b"".join(body.split()), validate=True))
            except ValueError:
                continue
    return sorted(seen)


def encode_pem(ders: Iterable[bytes]) -> str:
    out = []
    for der in ders:
        b64 = base64.b64encode(der).decode()
        lines = "\n".join(b64[i:i + 64] for i in range(0, len(b64), 64))
        out.append(f"-----BEGIN CERTIFICATE-----\n{lines}\n-----END CERTIFICATE-----\n")
    return "".join(out)


def configmap_data(matched: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """The ConfigMap's data for the bundles a selection matched (pure)."""
    pem = encode_pem(pem_certificates(matched))
    data = {mutation.TRUST_BUNDLE_OR_EMPTY_KEY: pem}
    if matched:
        data[mutation.TRUST_BUNDLE_KEY] = pem
    return data


async def _matching(tenant: Tenant, selection: Mapping[str, Any]) -> list[dict[str, Any]]:
    if "name" in selection:
        try:
            return [await tenant.client.get(resources.CLUSTERTRUSTBUNDLES, selection["name"])]
        except errors.NotFound:
            return []
    try:
        labels = selector_string(selection.get("labelSelector"))
    except NothingMatches:
        return []
    listed = await tenant.client.list(resources.CLUSTERTRUSTBUNDLES, label_selector=labels or None,
                                      field_selector=f"spec.signerName={selection['signerName']}")
    return [b for b in listed.items if (b.get("spec") or {}).get("signerName") == selection["signerName"]]


async def ensure(sx: SyncContext, tenant: Tenant, vobj: Mapping[str, Any]) -> None:
    """Create or refresh the ConfigMaps the super copy of `vobj` will mount."""
    selections = {mutation.trust_bundle_configmap(sel): sel for sel in
                  map(mutation.trust_bundle_selection, mutation.trust_bundle_sources(vobj))}
    super_ns = tenant.id.super_namespace(vobj["metadata"]["namespace"])
    for name, selection in sorted(selections.items(), key=lambda item: item[0]):
        try:
            data = configmap_data(await _matching(tenant, selection))
        except ValueError as exc:  # a selector the apiserver would have refused already
            log.warning("tenant %s: pod %s/%s: clusterTrustBundle selection %s: %s", tenant.key,
                        vobj["metadata"]["namespace"], vobj["metadata"]["name"], selection, exc)
            data = configmap_data([])
        body: dict[str, Any] = {
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": super_ns,
                         "labels": {naming.LABEL_CLUSTER: tenant.key},
                         "annotations": {ANNOTATION_SELECTION: json.dumps(selection, sort_keys=True, separators=(",", ":"))}},
            "data": data,
        }
        try:
            await sx.super_client.create(resources.CONFIGMAPS, body, namespace=super_ns)
            continue
        except errors.AlreadyExists:
            have = await sx.super_client.get(resources.CONFIGMAPS, name, namespace=super_ns)
        if (have.get("data") or {}) != data:
            body["metadata"]["resourceVersion"] = have["metadata"]["resourceVersion"]
            await sx.super_client.update(resources.CONFIGMAPS, body, namespace=super_ns)
