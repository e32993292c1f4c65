"""Pure drift detection between a tenant object and its super copy (SPEC §3.4, §3.7).

Every function returns the patch that brings the target side to the desired state, or None when
both sides already agree. Every patch is an RFC 7386 JSON merge patch (`None` deletes a key,
lists are replaced whole), so one content type serves every kind, including status subresources.
"Downward" (DW) patches target the super object; "upward" (UW) patches target the tenant object.
Key filtering follows SPEC §3.4: keys under the built-in tenancy prefixes, the VC's opaque and
transparent prefixes, or the opaque domains are never pushed down and never removed from super.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from appliance.syncer import conversion
from appliance.util import naming

_SERVICE_ALLOCATED = ("clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy", "healthCheckNodePort")


def json_merge_patch(old: Any, new: Any) -> Any:
    """Return the RFC 7386 merge patch turning `old` into `new`, or None when they are equal.

    Inside mappings a key whose value is None counts as absent. Non-mapping values (lists
    included) are replaced whole.
    """
    if not isinstance(old, Mapping) or not isinstance(new, Mapping):
        return None if old == new else copy.deepcopy(new)
    patch: dict[str, Any] = {}
    for key, old_value in old.items():
        if old_value is not None and new.get(key) is None:
            patch[key] = None
    for key, new_value in new.items():
        if new_value is None:
            continue
        old_value = old.get(key)
        if old_value is None:
            patch[key] = copy.deepcopy(new_value)
        elif isinstance(old_value, Mapping) and isinstance(new_value, Mapping):
            sub = json_merge_patch(old_value, new_value)
            if sub is not None:
                patch[key] = sub
        elif old_value != new_value:
            patch[key] = copy.deepcopy(new_value)
    return patch or None


def merge_patches(*patches: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Combine merge patches (later ones win on conflicts); None when all are None."""
    result: dict[str, Any] = {}
    for patch in patches:
        if patch is not None:
            _deep_update(result, patch)
    return result or None


def _deep_update(target: dict[str, Any], patch: Mapping[str, Any]) -> None:
    for key, value in patch.items():
        if isinstance(value, Mapping) and isinstance(target.get(key), dict):
            _deep_update(target[key], value)
        else:
            target[key] = copy.deepcopy(value)


# --- labels and annotations -------------------------------------------------------------------
def dw_kv_patch(
    tenant: Mapping[str, str] | None,
    super_: Mapping[str, str] | None,
    *,
    exception_prefixes: Iterable[str] = (),
    opaque_domains: Iterable[str] = naming.DEFAULT_OPAQUE_DOMAINS,
) -> dict[str, str | None] | None:
    """Merge patch for a super label/annotation map so it follows the tenant map.

    Keys under the built-in prefixes, `exception_prefixes` (the VC's opaque + transparent
    prefixes) or `opaque_domains` are ignored on both sides, so super-only keys of that kind
    survive. Other super keys missing in the tenant are removed; new or changed tenant keys set.
    """
    tenant, super_ = tenant or {}, super_ or {}
    prefixes, domains = tuple(exception_prefixes), tuple(opaque_domains)

    def ignored(key: str) -> bool:
        return conversion.is_opaque_key(key, prefixes=prefixes, domains=domains)

    patch: dict[str, str | None] = {k: None for k in super_ if k not in tenant and not ignored(k)}
    patch.update({k: v for k, v in tenant.items() if super_.get(k) != v and not ignored(k)})
    return patch or None


def uw_kv_patch(
    tenant: Mapping[str, str] | None,
    super_: Mapping[str, str] | None,
    *,
    transparent_prefixes: Iterable[str] = (),
) -> dict[str, str] | None:
    """Merge patch copying transparent super keys up to the tenant map; keys are never removed."""
    tenant, super_ = tenant or {}, super_ or {}
    prefixes = (naming.TRANSPARENCY_PREFIX, *(p for p in transparent_prefixes if p))
    patch = {k: v for k, v in super_.items() if k.startswith(prefixes) and tenant.get(k) != v}
    return patch or None


def meta_dw_patch(
    tenant_obj: Mapping[str, Any],
    super_obj: Mapping[str, Any],
    *,
    exception_prefixes: Iterable[str] = (),
    opaque_domains: Iterable[str] = naming.DEFAULT_OPAQUE_DOMAINS,
) -> dict[str, Any] | None:
    """Merge patch of super metadata (generateName, labels, annotations) per the DW rules."""
    t_meta, s_meta = tenant_obj.get("metadata") or {}, super_obj.get("metadata") or {}
    prefixes, domains = tuple(exception_prefixes), tuple(opaque_domains)
    meta: dict[str, Any] = {}
    for field in ("labels", "annotations"):
        patch = dw_kv_patch(t_meta.get(field), s_meta.get(field), exception_prefixes=prefixes, opaque_domains=domains)
        if patch is not None:
            meta[field] = patch
    if (t_meta.get("generateName") or None) != (s_meta.get("generateName") or None):
        meta["generateName"] = t_meta.get("generateName") or None
    return {"metadata": meta} if meta else None


def meta_uw_patch(
    tenant_obj: Mapping[str, Any],
    super_obj: Mapping[str, Any],
    *,
    transparent_prefixes: Iterable[str] = (),
) -> dict[str, Any] | None:
    """Merge patch of tenant metadata copying transparent super labels and annotations up."""
    t_meta, s_meta = tenant_obj.get("metadata") or {}, super_obj.get("metadata") or {}
    prefixes = tuple(transparent_prefixes)
    meta: dict[str, Any] = {}
    for field in ("labels", "annotations"):
        patch = uw_kv_patch(t_meta.get(field), s_meta.get(field), transparent_prefixes=prefixes)
        if patch is not None:
            meta[field] = patch
    return {"metadata": meta} if meta else None


# --- pods -------------------------------------------------------------------------------------
def _containers_patch(tenant: list[dict[str, Any]] | None, super_: list[dict[str, Any]] | None) -> Any:
    """Super container list with tenant images applied by name, or None if no image differs."""
    images = {c.get("name"): c.get("image") for c in tenant or ()}
    desired, changed = [], False
    for container in super_ or ():
        image = images.get(container.get("name"))  # super-webhook containers: not in `images`
        if image is not None and image != container.get("image"):
            container = {**container, "image": image}
            changed = True
        desired.append(container)
    return copy.deepcopy(desired) if changed else None


def pod_resize_patch(tenant_pod: Mapping[str, Any], super_pod: Mapping[str, Any]) -> dict[str, Any] | None:
    """Patch for the super Pod's `resize` subresource when the tenant resized a container
    (in-place resize: resources change only through that subresource).

    Only values the tenant sets are compared: requests and limits the super cluster added
    (a LimitRange, a webhook) stay, since a resize could not remove them anyway."""
    t_spec, s_spec = tenant_pod.get("spec") or {}, super_pod.get("spec") or {}
    spec = {}
    for group in ("containers", "initContainers"):
        wanted = {c.get("name"): c.get("resources") or {} for c in t_spec.get(group) or ()}
        desired, changed = [], False
        for container in s_spec.get(group) or ():
            have = container.get("resources") or {}
            want = {kind: {**(have.get(kind) or {}), **(wanted.get(container.get("name"), {}).get(kind) or {})}
                    for kind in ("requests", "limits")}
            merged = {**have, **{k: v for k, v in want.items() if v}}
            if merged != have:
                container, changed = {**container, "resources": merged}, True
            desired.append(container)
        if changed:
            spec[group] = copy.deepcopy(desired)
    return {"spec": spec} if spec else None


def pod_dw_patch(
    tenant_pod: Mapping[str, Any],
    super_pod: Mapping[str, Any],
    *,
    exception_prefixes: Iterable[str] = (),
    opaque_domains: Iterable[str] = naming.DEFAULT_OPAQUE_DOMAINS,
) -> dict[str, Any] | None:
    """Merge patch bringing a super Pod in line with its tenant Pod (SPEC §3.7 Pod DWS update).

    Covers metadata (DW rules), container and initContainer images matched by name (containers
    only in super, e.g. webhook sidecars, are kept as they are) and `activeDeadlineSeconds`.
    A tenant that has no activeDeadlineSeconds never clears super's: Kubernetes forbids unsetting it.
    """
    spec = _pod_spec_dw_patch(tenant_pod, super_pod)
    meta = meta_dw_patch(tenant_pod, super_pod, exception_prefixes=exception_prefixes, opaque_domains=opaque_domains)
    return merge_patches(meta, {"spec": spec} if spec else None)


def _pod_spec_dw_patch(tenant_pod: Mapping[str, Any], super_pod: Mapping[str, Any]) -> dict[str, Any]:
    t_spec, s_spec = tenant_pod.get("spec") or {}, super_pod.get("spec") or {}
    spec: dict[str, Any] = {}
    for field in ("containers", "initContainers"):
        desired = _containers_patch(t_spec.get(field), s_spec.get(field))
        if desired is not None:
            spec[field] = desired
    deadline = t_spec.get("activeDeadlineSeconds")
    if deadline is not None and deadline != s_spec.get("activeDeadlineSeconds"):
        spec["activeDeadlineSeconds"] = deadline
    return spec


def _generation_map(tenant_pod: Mapping[str, Any], super_pod: Mapping[str, Any]) -> Callable[[Any, Any], Any]:
    """How a super `observedGeneration` reads in the tenant.

    The two Pods count generations apart (tenant-only changes such as added tolerations bump only
    the tenant's), but once the super Pod carries every tenant change the syncer copies down,
    the kubelet having observed super generation g means it has seen tenant generation
    g + (tenant generation - super generation). While a change is still on its way down the
    tenant keeps what it had: the kubelet has not seen that change."""
    t_gen = (tenant_pod.get("metadata") or {}).get("generation")
    s_gen = (super_pod.get("metadata") or {}).get("generation")
    pending = _pod_spec_dw_patch(tenant_pod, super_pod) or pod_resize_patch(tenant_pod, super_pod)
    if not isinstance(t_gen, int) or not isinstance(s_gen, int) or pending:
        return lambda observed, current: current
    return lambda observed, current: (max(0, min(t_gen, observed + t_gen - s_gen))
                                      if isinstance(observed, int) else observed)


def missing_ephemeral_containers(tenant_pod: Mapping[str, Any], super_pod: Mapping[str, Any]) -> list[str]:
    """Names of the tenant's ephemeral containers the super Pod lacks. Ephemeral containers are
    only ever added (the API refuses changes and removals), so names are enough."""
    have = {c.get("name") for c in (super_pod.get("spec") or {}).get("ephemeralContainers") or ()}
    return [str(c.get("name")) for c in (tenant_pod.get("spec") or {}).get("ephemeralContainers") or ()
            if c.get("name") not in have]


def readiness_gates(pod: Mapping[str, Any]) -> set[str]:
    """Condition types a Pod lists in `spec.readinessGates`."""
    gates = (pod.get("spec") or {}).get("readinessGates") or ()
    return {g["conditionType"] for g in gates if g.get("conditionType")}


def _conditions(pod: Mapping[str, Any]) -> list[dict[str, Any]]:
    return list((pod.get("status") or {}).get("conditions") or ())


def pod_dw_status_patch(tenant_pod: Mapping[str, Any], super_pod: Mapping[str, Any]) -> dict[str, Any] | None:
    """Status merge patch copying the tenant's readiness-gate conditions down to the super Pod."""
    gates = readiness_gates(tenant_pod)
    wanted = {c.get("type"): c for c in _conditions(tenant_pod) if c.get("type") in gates}
    if not wanted:
        return None
    desired = []
    for cond in _conditions(super_pod):
        desired.append(wanted.pop(cond.get("type"), cond))
    desired.extend(wanted.values())
    if desired == _conditions(super_pod):
        return None
    return {"status": {"conditions": copy.deepcopy(desired)}}


#: Pod condition types the super cluster's scheduler and kubelet set; the tenant's own
#: (DisruptionTarget from an eviction in the tenant, conditions of its controllers) are kept.
SUPER_POD_CONDITIONS = frozenset({
    "PodScheduled", "PodReadyToStartContainers", "Initialized", "ContainersReady", "Ready",
    "PodResizePending", "PodResizeInProgress",
})


def pod_uw_status_patch(tenant_pod: Mapping[str, Any], super_pod: Mapping[str, Any], *,
                        bound: bool = False) -> dict[str, Any] | None:
    """Status merge patch mirroring super Pod status to the tenant (SPEC §3.7 Pod UWS step 4).

    `bound`: `tenant_pod` is the cached Pod from before the Binding the caller just made. The
    tenant apiserver set `PodScheduled=True` itself when it bound the Pod, so the super Pod's
    `PodScheduled` (a different transition time) is taken as already there: a Pod that is only
    scheduled needs no status write; its next status change carries the super condition.

    Readiness-gate conditions are the tenant's own: those for gates the tenant declares keep the
    tenant value (and are kept even if super lacks them); those for gates only super declares
    are dropped. Conditions of types the super cluster never sets (`SUPER_POD_CONDITIONS`), such
    as the DisruptionTarget a tenant eviction adds, stay when super lacks them. Everything else
    comes from super, observed generations counted in the tenant's generations (`_generation_map`).
    """
    t_gates, s_gates = readiness_gates(tenant_pod), readiness_gates(super_pod)
    tenant_conds = {c.get("type"): c for c in _conditions(tenant_pod)}
    generation = _generation_map(tenant_pod, super_pod)
    conditions = []
    for cond in _conditions(super_pod):
        kind = cond.get("type")
        if kind in t_gates:
            if kind in tenant_conds:
                conditions.append(tenant_conds[kind])
        elif kind not in s_gates:
            conditions.append(_condition_generation(cond, tenant_conds.get(kind), generation))
    super_types = {c.get("type") for c in _conditions(super_pod)}
    conditions.extend(
        c for c in _conditions(tenant_pod) if c.get("type") not in super_types
        and (c.get("type") in t_gates or c.get("type") not in SUPER_POD_CONDITIONS)
    )
    desired = dict(super_pod.get("status") or {})
    have = tenant_pod.get("status") or {}
    if bound:
        have = _as_bound(have, conditions)
    if "observedGeneration" in desired:
        desired["observedGeneration"] = generation(desired["observedGeneration"], have.get("observedGeneration"))
        if desired["observedGeneration"] is None:
            del desired["observedGeneration"]
    if conditions or "conditions" in desired:
        desired["conditions"] = conditions
    patch = json_merge_patch(have, desired)
    return {"status": patch} if patch is not None else None


def _as_bound(status: Mapping[str, Any], desired_conditions: list[dict[str, Any]]) -> Mapping[str, Any]:
    """`status` as the tenant apiserver left it after a Binding, with the wanted `PodScheduled=True`."""
    scheduled = next((c for c in desired_conditions
                      if c.get("type") == "PodScheduled" and c.get("status") == "True"), None)
    if scheduled is None:
        return status
    have = list(status.get("conditions") or ())
    at = next((i for i, c in enumerate(have) if c.get("type") == "PodScheduled"), None)
    if at is None:
        have.append(scheduled)
    else:
        have[at] = scheduled
    return {**status, "conditions": have}


def _condition_generation(cond: dict[str, Any], have: Mapping[str, Any] | None,
                          generation: Callable[[Any, Any], Any]) -> dict[str, Any]:
    if "observedGeneration" not in cond:
        return cond
    out = dict(cond)
    out["observedGeneration"] = generation(cond["observedGeneration"], (have or {}).get("observedGeneration"))
    if out["observedGeneration"] is None:
        del out["observedGeneration"]
    return out


# --- services, config maps, secrets, status ---------------------------------------------------
def _comparable_service_spec(spec: Mapping[str, Any], *, ignore_external_ips: bool) -> dict[str, Any]:
    result = copy.deepcopy(dict(spec))
    for field in _SERVICE_ALLOCATED:
        result.pop(field, None)
    if ignore_external_ips:
        result.pop("externalIPs", None)
    for port in result.get("ports") or ():
        port.pop("nodePort", None)
    return result


def service_spec_patch(
    tenant_svc: Mapping[str, Any],
    super_svc: Mapping[str, Any],
    *,
    ignore_external_ips: bool = False,
    keep_node_ports: bool = True,
) -> dict[str, Any] | None:
    """Merge patch of a super Service spec following the tenant's (SPEC §3.7 Service update).

    Compares ignoring clusterIP(s), ipFamilies, ipFamilyPolicy and node ports (and externalIPs
    with gate VServiceExternalIP). On a difference the desired spec is the tenant's with super's
    allocated fields kept: clusterIP(s) and IP families; node ports (by port index) and
    healthCheckNodePort where the tenant's type still allows them, the tenant's own where it has
    one and `keep_node_ports` (a Service turned NodePort gets the port its tenant was given),
    else the super's.
    """
    t_spec, s_spec = tenant_svc.get("spec") or {}, super_svc.get("spec") or {}
    if _comparable_service_spec(t_spec, ignore_external_ips=ignore_external_ips) == _comparable_service_spec(
        s_spec, ignore_external_ips=ignore_external_ips
    ):
        return None
    desired = _comparable_service_spec(t_spec, ignore_external_ips=ignore_external_ips)
    for field in ("clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"):
        if field in s_spec:
            desired[field] = copy.deepcopy(s_spec[field])
    if ignore_external_ips and "externalIPs" in s_spec:
        desired["externalIPs"] = copy.deepcopy(s_spec["externalIPs"])
    kind = desired.get("type", "ClusterIP")
    if kind in ("NodePort", "LoadBalancer"):
        super_ports, tenant_ports = s_spec.get("ports") or [], t_spec.get("ports") or []
        for index, port in enumerate(desired.get("ports") or ()):
            if keep_node_ports and index < len(tenant_ports) and tenant_ports[index].get("nodePort"):
                port["nodePort"] = tenant_ports[index]["nodePort"]
            elif index < len(super_ports) and super_ports[index].get("nodePort"):
                port["nodePort"] = super_ports[index]["nodePort"]
    if kind == "LoadBalancer" and desired.get("externalTrafficPolicy") == "Local":
        check = (t_spec.get("healthCheckNodePort") if keep_node_ports else None) or s_spec.get("healthCheckNodePort")
        if check:
            desired["healthCheckNodePort"] = check
    patch = json_merge_patch(s_spec, desired)
    return {"spec": patch} if patch is not None else None


def _fields_patch(tenant_obj: Mapping[str, Any], super_obj: Mapping[str, Any], fields: Iterable[str]) -> Any:
    fields = tuple(fields)
    return json_merge_patch(
        {f: super_obj.get(f) or None for f in fields}, {f: tenant_obj.get(f) or None for f in fields}
    )


def configmap_data_patch(tenant_cm: Mapping[str, Any], super_cm: Mapping[str, Any]) -> dict[str, Any] | None:
    """Merge patch of a super ConfigMap's `data` and `binaryData` following the tenant's."""
    patch: dict[str, Any] | None = _fields_patch(tenant_cm, super_cm, ("data", "binaryData"))
    return patch


def secret_data_patch(tenant_secret: Mapping[str, Any], super_secret: Mapping[str, Any]) -> dict[str, Any] | None:
    """Merge patch of a super Secret's `data` and `stringData` following the tenant's."""
    patch: dict[str, Any] | None = _fields_patch(tenant_secret, super_secret, ("data", "stringData"))
    return patch


def status_uw_patch(tenant_obj: Mapping[str, Any], super_obj: Mapping[str, Any]) -> dict[str, Any] | None:
    """Merge patch copying a super object's whole `status` up (Service LB status, Ingress)."""
    patch = json_merge_patch(tenant_obj.get("status") or {}, super_obj.get("status") or {})
    return {"status": patch} if patch is not None else None
