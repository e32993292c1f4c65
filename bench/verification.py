"""Waiting for objects, and the final full comparison that makes a benchmark's verdict.

`verify_synced` / `verify_direct` check that every expected pod exists exactly once on both
sides with matching UIDs (and Running, when asked); anything lost, duplicated or orphaned is
a problem, and problems make the benchmark exit 1. The waits poll another process's state
and are for set-up only; measurements use the watch clocks.
"""

from __future__ import annotations

import collections
import contextlib
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import trio

from appliance.kube import errors, resources
from appliance.kube.client import ApiClient
from appliance.util import naming
from bench import clocks, report

if TYPE_CHECKING:
    from bench import testbed

PODS = resources.PODS


async def get_or_none(client: ApiClient, res: resources.Resource, name: str, ns: str | None) -> dict[str, Any] | None:
    try:
        return await client.get(res, name, namespace=ns)
    except errors.NotFound:
        return None


async def wait_exists(client: ApiClient, res: resources.Resource, name: str, ns: str | None, *,
                      timeout: float, where: Callable[[dict[str, Any]], bool] | None = None) -> dict[str, Any]:
    """Set-up helper: poll (another process's state) until the object exists (and `where` holds)."""
    with trio.move_on_after(timeout):
        while True:
            obj = await get_or_none(client, res, name, ns)
            if obj is not None and (where is None or where(obj)):
                return obj
            await trio.sleep(0.2)
    raise report.Misbehaved(f"{res} {ns}/{name} not there after {timeout:.0f} s")


async def wait_gone(client: ApiClient, res: resources.Resource, name: str, ns: str | None, *, timeout: float) -> None:
    with trio.move_on_after(timeout):
        while await get_or_none(client, res, name, ns) is not None:
            await trio.sleep(0.5)
        return
    raise report.Misbehaved(f"{res} {ns}/{name} still there after {timeout:.0f} s")


def _running(pod: dict[str, Any]) -> bool:
    return clocks.phase(pod) == "Running" and bool((pod.get("spec") or {}).get("nodeName"))


async def verify_synced(bed: testbed.Bed, tenants: Sequence[testbed.BedTenant], expected: dict[str, dict[str, set[str]]], *,
                        running: bool) -> list[str]:
    """Full comparison for synced pods. `expected[cluster key][tenant ns]` = pod names.

    Every expected pod must exist once in the tenant and once in the super cluster (in its super
    namespace, carrying the tenant pod's UID), and no other super pod may name the tenant; with
    `running`, both copies are Running on the same node.
    """
    problems: list[str] = []
    for t in tenants:
        want = expected.get(t.key, {})
        supers = (await bed.superc.list(PODS, label_selector=f"{naming.LABEL_CLUSTER}={t.key}")).items
        seen: dict[tuple[str, str], list[dict[str, Any]]] = collections.defaultdict(list)
        for p in supers:
            ann = p["metadata"].get("annotations") or {}
            seen[(ann.get(naming.ANNOTATION_NAMESPACE, "?"), p["metadata"]["name"])].append(p)
        for ns, names in want.items():
            tpods = {p["metadata"]["name"]: p for p in (await t.client.list(PODS, namespace=ns)).items}
            for name in sorted(names):
                tp = tpods.get(name)
                copies = seen.get((ns, name), [])
                if tp is None:
                    problems.append(f"{t.name}: tenant pod {ns}/{name} lost")
                    continue
                if not copies:
                    problems.append(f"{t.name}: {ns}/{name} has no super pod")
                    continue
                if len(copies) > 1:
                    problems.append(f"{t.name}: {ns}/{name} has {len(copies)} super pods")
                sp = copies[0]
                if sp["metadata"]["namespace"] != t.super_ns(ns):
                    problems.append(f"{t.name}: {ns}/{name} copied to {sp['metadata']['namespace']}")
                if (sp["metadata"].get("annotations") or {}).get(naming.ANNOTATION_UID) != tp["metadata"]["uid"]:
                    problems.append(f"{t.name}: {ns}/{name} super pod names another tenant UID")
                if running:
                    if not _running(sp):
                        problems.append(f"{t.name}: super pod of {ns}/{name} is {clocks.phase(sp) or 'without phase'}")
                    elif not _running(tp):
                        problems.append(f"{t.name}: tenant pod {ns}/{name} is {clocks.phase(tp) or 'without phase'}")
                    elif tp["spec"]["nodeName"] != sp["spec"]["nodeName"]:
                        problems.append(f"{t.name}: {ns}/{name} on {tp['spec']['nodeName']} in the tenant, "
                                        f"{sp['spec']['nodeName']} in super")
            extra = sorted(set(tpods) - names)
            if extra:
                problems.append(f"{t.name}: {len(extra)} unexpected tenant pods in {ns}: {extra[:5]}")
        wanted = {(ns, n) for ns, names in want.items() for n in names}
        orphans = sorted(k for k in seen if k not in wanted and k[0] in want)
        if orphans:
            problems.append(f"{t.name}: {len(orphans)} super pods without a tenant pod: {orphans[:5]}")
    return problems


async def verify_direct(bed: testbed.Bed, ns: str, names: set[str], *, running: bool) -> list[str]:
    pods = {p["metadata"]["name"]: p for p in (await bed.superc.list(PODS, namespace=ns)).items}
    problems = [f"direct pod {ns}/{n} lost" for n in sorted(names - set(pods))]
    extra = sorted(set(pods) - names)
    if extra:
        problems.append(f"{len(extra)} unexpected direct pods: {extra[:5]}")
    if running:
        problems += [f"direct pod {ns}/{n} is {clocks.phase(p)}" for n, p in pods.items() if n in names and not _running(p)]
    return problems


async def delete_namespace(client: ApiClient, ns: str, *, timeout: float = 600) -> float:
    """Delete a namespace and wait until it is gone; returns the seconds it took."""
    t0 = trio.current_time()
    with contextlib.suppress(errors.NotFound):
        await client.delete(resources.NAMESPACES, ns)
    await wait_gone(client, resources.NAMESPACES, ns, None, timeout=timeout)
    return trio.current_time() - t0

