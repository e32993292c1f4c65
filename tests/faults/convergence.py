"""The full comparison after a fault: every tenant object against every super object, no sampling.

For one tenant (cluster key K, reached with its admin client):

    expected  {(kind, super namespace, super name, tenant UID)} built from *every* tenant object
              of the synced kinds with the documented naming rules: namespace X → super
              namespace K-X (hashed when long), `kube-root-ca.crt` → `tenant-kube-root-ca.crt`,
              service-account token Secrets not copied, Endpoints only for selector-less
              Services; terminating tenant objects are left out.
    actual    {(kind, namespace, name, tenancy.x-k8s.io/uid)} of every super object, cluster
              wide and unfiltered by label, whose `tenancy.x-k8s.io/cluster` annotation is K.

Problems: expected − actual (lost: not synced), actual − expected (orphans and stale copies),
one tenant UID on two super objects (duplicates), a Pod not Running on the same node on both
sides, a virtual node missing for a node that runs the tenant's Pods, and any Pod the test
created that is gone or was replaced (another UID) in the tenant.
"""

from __future__ import annotations

import collections
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import trio

from appliance.kube import resources
from appliance.kube.client import ApiClient
from appliance.util import naming

#: (kind, namespace, name, tenant uid); namespace "" for super Namespaces
Ref = tuple[str, str, str, str]

SYNCED = (
    resources.NAMESPACES, resources.CONFIGMAPS, resources.SECRETS, resources.SERVICEACCOUNTS,
    resources.SERVICES, resources.ENDPOINTS, resources.PVCS, resources.PODS,
)


@dataclass(frozen=True, slots=True)
class TenantView:
    """What the comparison needs of one tenant: its cluster key, a client, the Pods the test made."""

    key: str
    client: ApiClient
    #: (namespace, name) → UID of every Pod the test created and expects to still exist
    pods: Mapping[tuple[str, str], str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Comparison:
    problems: list[str]
    objects: int  # super objects expected plus tenant Pods checked

    @property
    def clean(self) -> bool:
        return not self.problems


def _live(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o for o in items if not o["metadata"].get("deletionTimestamp")]


def _running_on(pod: dict[str, Any]) -> str | None:
    """The node of a Running pod, else None."""
    if (pod.get("status") or {}).get("phase") != "Running":
        return None
    return (pod.get("spec") or {}).get("nodeName") or None


async def _tenant_objects(t: TenantView) -> dict[str, list[dict[str, Any]]]:
    return {res.plural: _live((await t.client.list(res)).items) for res in SYNCED}


def expected_refs(key: str, objs: Mapping[str, list[dict[str, Any]]]) -> set[Ref]:
    """The super objects that tenant `key`'s objects should have, by the naming rules (pure)."""
    refs: set[Ref] = set()
    for ns in objs["namespaces"]:
        refs.add(("namespaces", "", naming.super_namespace(key, ns["metadata"]["name"]), ns["metadata"]["uid"]))
    selectors = {(s["metadata"]["namespace"], s["metadata"]["name"]): bool((s.get("spec") or {}).get("selector"))
                 for s in objs["services"]}
    for plural, items in objs.items():
        if plural == "namespaces":
            continue
        for o in items:
            m = o["metadata"]
            name = m["name"]
            if plural == "configmaps" and name == "kube-root-ca.crt":
                name = "tenant-kube-root-ca.crt"
            if plural == "secrets" and o.get("type") == naming.SECRET_TYPE_SA_TOKEN:
                continue
            if plural == "endpoints" and selectors.get((m["namespace"], name), False):
                continue
            refs.add((plural, naming.super_namespace(key, m["namespace"]), name, m["uid"]))
    return refs


async def _super_objects(superc: ApiClient, key: str) -> dict[str, list[dict[str, Any]]]:
    out = {}
    for res in SYNCED:
        items = (await superc.list(res)).items
        out[res.plural] = [o for o in items
                           if (o["metadata"].get("annotations") or {}).get(naming.ANNOTATION_CLUSTER) == key]
    return out


def _ref(plural: str, o: dict[str, Any]) -> Ref:
    m = o["metadata"]
    return plural, m.get("namespace", ""), m["name"], (m.get("annotations") or {}).get(naming.ANNOTATION_UID, "")


async def compare(superc: ApiClient, t: TenantView) -> Comparison:
    """The full comparison for tenant `t` (see the module docstring)."""
    tenant = await _tenant_objects(t)
    supers = await _super_objects(superc, t.key)
    want = expected_refs(t.key, tenant)
    have = {_ref(plural, o) for plural, items in supers.items() for o in items
            if not o["metadata"].get("deletionTimestamp")}
    problems = [f"{t.key}: not in super: {r}" for r in sorted(want - have)]
    problems += [f"{t.key}: orphan or stale in super: {r}" for r in sorted(have - want)]
    uids = collections.Counter((plural, _ref(plural, o)[3]) for plural, items in supers.items() for o in items)
    problems += [f"{t.key}: {n} super {plural} carry tenant uid {uid}" for (plural, uid), n in uids.items() if n > 1]

    super_pods = {(o["metadata"]["namespace"], o["metadata"]["name"]): o for o in supers["pods"]}
    tenant_pods = {(o["metadata"]["namespace"], o["metadata"]["name"]): o for o in tenant["pods"]}
    vnodes = {n["metadata"]["name"] for n in (await t.client.list(
        resources.NODES, label_selector=f"{naming.LABEL_VIRTUAL_NODE}=true")).items}
    for (ns, name), pod in sorted(tenant_pods.items()):
        sp = super_pods.get((naming.super_namespace(t.key, ns), name))
        node = _running_on(pod)
        if sp is None:
            continue  # reported above
        if node is None or node != _running_on(sp):
            problems.append(f"{t.key}: pod {ns}/{name} is {_state(pod)} in the tenant, {_state(sp)} in super")
        elif node not in vnodes:
            problems.append(f"{t.key}: pod {ns}/{name} runs on {node}, which has no virtual node")
    for (ns, name), uid in sorted(t.pods.items()):
        now = tenant_pods.get((ns, name))
        if now is None:
            problems.append(f"{t.key}: tenant pod {ns}/{name} lost")
        elif now["metadata"]["uid"] != uid:
            problems.append(f"{t.key}: tenant pod {ns}/{name} replaced (uid {now['metadata']['uid']}, not {uid})")
    return Comparison(problems, len(want) + len(t.pods))


def _state(pod: dict[str, Any]) -> str:
    status, spec = pod.get("status") or {}, pod.get("spec") or {}
    return f"{status.get('phase') or 'no phase'}@{spec.get('nodeName') or '-'}"


async def compare_all(superc: ApiClient, tenants: list[TenantView]) -> Comparison:
    problems: list[str] = []
    objects = 0
    for t in tenants:
        c = await compare(superc, t)
        problems += c.problems
        objects += c.objects
    return Comparison(problems, objects)


async def wait_converged(
    superc: ApiClient, tenants: list[TenantView], *, timeout: float, interval: float = 1.0
) -> tuple[float, Comparison]:
    """Repeat the full comparison until it is clean; returns (seconds it took, the clean result).

    Fails with the problems of the last comparison (the first 30) after `timeout` seconds.
    """
    started = trio.current_time()
    last = Comparison(["not compared yet"], 0)
    with trio.move_on_after(timeout):
        while True:
            last = await compare_all(superc, tenants)
            if last.clean:
                return trio.current_time() - started, last
            await trio.sleep(interval)  # another process converges: poll it under the deadline
    shown = "\n  ".join(last.problems[:30])
    raise AssertionError(f"not converged after {timeout:.0f} s ({len(last.problems)} problems):\n  {shown}")
