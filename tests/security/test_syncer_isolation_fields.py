"""The syncer never lets a tenant's own fields reach outside its own super namespaces.

Extends tests/integration/test_syncer_isolation.py (forged tenancy labels and annotations on
namespaces, ConfigMaps, Services and Pods) with the other fields a tenant controls: namespace
names that collide with another tenant's after prefixing, owner references, Service selectors,
Endpoints aimed at another tenant's pod, a PVC naming another tenant's PV, cluster-scoped
objects, Pod Security labels, and bad input (oversized annotations, names that overflow when
mapped, non-UTF-8 data, pods the super cluster's policy forbids). Every check compares the real
super cluster before and after, and looks for the Warning Event the tenant should get.
"""

from __future__ import annotations

import base64
import contextlib
import json
import uuid
from typing import Any

import pytest
import trio

from appliance.kube import errors, resources
from appliance.util import naming
from tests.integration import syncing
from tests.security.conftest import keyed_tenant
from tests.tally import Tally
from tests.testbed import run_kubectl, wait_for

pytestmark = [pytest.mark.security, pytest.mark.integration]


def jwt_claims(token: bytes) -> dict[str, Any]:
    payload = token.split(b".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + b"=" * (-len(payload) % 4)))  # type: ignore[no-any-return]


async def warning(t: syncing.BedTenant, ns: str, name: str, *, reason: str, text: str = "") -> dict[str, Any]:
    """Wait for a Warning Event about tenant object `name` in `ns` whose message contains `text`."""

    async def find() -> dict[str, Any] | None:
        events = (await t.client.list(resources.EVENTS, namespace=ns)).items
        return next((e for e in events if e["type"] == "Warning" and e["reason"] == reason
                     and e["involvedObject"]["name"] == name and text in e.get("message", "")), None)

    return await wait_for(find, timeout=60, what=f"a {reason} Warning Event on {ns}/{name}")  # type: ignore[return-value]


async def running_pod(env: syncing.Env, t: syncing.BedTenant, name: str, ns: str = "default",
                      **labels: str) -> dict[str, Any]:
    """Create a tenant pod and return its Running super copy."""
    body = syncing.pod_manifest(name)
    body["metadata"]["labels"] = labels
    await t.client.create(resources.PODS, body, namespace=ns)
    return await syncing.wait_object(env.superc, resources.PODS, name, namespace=t.id.super_namespace(ns),
                                     where=lambda p: p.get("status", {}).get("podIP"), timeout=90)


@syncing.deadline(180)
async def test_colliding_namespace_never_writes_into_another_tenant(env: syncing.Env, tally: Tally) -> None:
    """Tenant B's key is A's key + `-x`, so A's namespace `x-default` maps onto B's super `default`:
    A's namespace and every object in it are refused with an Event; B's super objects stay as they were."""
    sx = await env.start()
    a = await env.tenant(sx, "fa")
    b = await keyed_tenant(env, sx, "fb", key=f"{a.key}-x")
    target = b.id.super_namespace("default")
    assert a.id.super_namespace("x-default") == target
    await syncing.wait_object(b.client, resources.SERVICEACCOUNTS, "default", namespace="default")
    await b.client.create(resources.CONFIGMAPS, {"metadata": {"name": "settings"}, "data": {"who": "b"}},
                          namespace="default")
    await running_pod(env, b, "web")
    await syncing.wait_object(env.superc, resources.CONFIGMAPS, "settings", namespace=target)
    await syncing.wait_quiet(sx, scans=0)
    before = await syncing.super_snapshot(env.superc, b)

    await a.client.create(resources.NAMESPACES, {"metadata": {"name": "x-default"}})
    await syncing.wait_object(a.client, resources.SERVICEACCOUNTS, "default", namespace="x-default")
    attempts: list[tuple[resources.Resource, dict[str, Any]]] = [
        (resources.CONFIGMAPS, {"metadata": {"name": "settings"}, "data": {"who": "a"}}),
        (resources.CONFIGMAPS, {"metadata": {"name": "planted"}, "data": {"who": "a"}}),
        (resources.SECRETS, {"metadata": {"name": "planted"}, "stringData": {"k": "v"}}),
        (resources.SERVICES, {"metadata": {"name": "planted"}, "spec": {"ports": [{"port": 80}]}}),
        (resources.SERVICEACCOUNTS, {"metadata": {"name": "planted"}}),
        (resources.PVCS, {"metadata": {"name": "planted"}, "spec": {
            "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}),
        (resources.PODS, syncing.pod_manifest("planted")),
    ]
    for res, body in attempts:
        await a.client.create(res, body, namespace="x-default")
    await warning(a, "default", "x-default", reason="FailedSync", text="not owned by this tenant")
    for _, body in attempts:
        await warning(a, "x-default", body["metadata"]["name"], reason="FailedSync", text="not owned by this tenant")
    await syncing.wait_quiet(sx, scans=0)
    after = await syncing.super_snapshot(env.superc, b)
    planted = sorted(k for k in after if k[2] == "planted")
    tally.add("syncer: writes into a colliding namespace (tried / refused)", tried=len(attempts) + 2,
              held=len(attempts) + 2 - len(planted) - (after != before))
    assert [] == planted
    assert before == after
    sa = await env.superc.get(resources.SERVICEACCOUNTS, "default", namespace=target)
    assert sa["metadata"]["annotations"][naming.ANNOTATION_CLUSTER] == b.key
    tally.add("syncer: super objects compared", tried=len(before), held=len(before))


def super_pv(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": name}, "spec": {
        "capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"], "storageClassName": "",
        "persistentVolumeReclaimPolicy": "Retain", "hostPath": {"path": f"/tmp/{name}"}}}


def claim(name: str, volume: str) -> dict[str, Any]:
    return {"metadata": {"name": name}, "spec": {
        "accessModes": ["ReadWriteOnce"], "storageClassName": "", "volumeName": volume,
        "resources": {"requests": {"storage": "1Gi"}}}}


async def endpoint_slices(env: syncing.Env, ns: str) -> dict[str, str]:
    out = await run_kubectl(env.sc.kubectl, env.sc.kubeconfig, "get", "endpointslices", "-n", ns, "-o", "json")
    return {s["metadata"]["name"]: s["metadata"]["resourceVersion"] for s in json.loads(out.stdout)["items"]}


async def super_event(env: syncing.Env, ns: str, name: str, reason: str) -> None:
    async def find() -> bool:
        events = (await env.superc.list(resources.EVENTS, namespace=ns)).items
        return any(e["reason"] == reason and e["involvedObject"]["name"] == name for e in events)

    await wait_for(find, timeout=60, what=f"a super {reason} Event on {ns}/{name}")


@syncing.deadline(200)
async def test_references_to_another_tenant_stay_inside(env: syncing.Env, tally: Tally) -> None:
    """Owner references, selectors, Endpoints, a PVC `volumeName`, Service externalIPs,
    cluster-scoped objects and Pod Security labels a tenant sets never reach another tenant's or
    the super cluster's own objects."""
    sx = await env.start()
    a, b = await env.tenant(sx, "ra"), await env.tenant(sx, "rb")
    b_ns = b.id.super_namespace("default")
    pv = f"sec-pv-{uuid.uuid4().hex[:8]}"
    await env.superc.create(resources.PVS, super_pv(pv))
    env.stack.push_async_callback(_delete_quietly, env, resources.PVS, pv)
    for t in (a, b):
        await syncing.wait_object(t.client, resources.SERVICEACCOUNTS, "default", namespace="default")
    await b.client.create(resources.PVCS, claim("data", pv), namespace="default")
    victim = await running_pod(env, b, "web", app="shared")
    b_pvc = await syncing.wait_object(env.superc, resources.PVCS, "data", namespace=b_ns,
                                      where=lambda c: c.get("status", {}).get("phase") == "Bound")
    await syncing.wait_object(b.client, resources.PVS, pv, what="B's copy of its bound PV")
    await syncing.wait_quiet(sx, scans=0)
    before, slices_before = await syncing.super_snapshot(env.superc, b), await endpoint_slices(env, b_ns)
    pv_before = await env.superc.get(resources.PVS, pv)

    tag = uuid.uuid4().hex[:8]
    anchor = await a.client.create(resources.CONFIGMAPS, {"metadata": {"name": "anchor"}}, namespace="default")
    owners = [
        {"apiVersion": "v1", "kind": "ConfigMap", "name": "anchor", "uid": anchor["metadata"]["uid"]},
        {"apiVersion": "v1", "kind": "Pod", "name": "web", "uid": victim["metadata"]["uid"],
         "controller": True, "blockOwnerDeletion": True},
    ]
    await a.client.create(resources.CONFIGMAPS, {"metadata": {"name": "child", "ownerReferences": owners}},
                          namespace="default")
    for name, selector in (("grab", {"app": "shared"}), ("grab-stamp", {naming.LABEL_CLUSTER: b.key})):
        await a.client.create(resources.SERVICES, {"metadata": {"name": name}, "spec": {
            "selector": selector, "ports": [{"port": 80}]}}, namespace="default")
    await a.client.create(resources.SERVICES, {"metadata": {"name": "alias"}, "spec": {"ports": [{"port": 80}]}},
                          namespace="default")
    await a.client.create(resources.ENDPOINTS, {"metadata": {"name": "alias"}, "subsets": [{
        "addresses": [{"ip": victim["status"]["podIP"], "targetRef": {
            "kind": "Pod", "namespace": b_ns, "name": "web", "uid": victim["metadata"]["uid"]}}],
        "ports": [{"port": 80}]}]}, namespace="default")
    await a.client.create(resources.PVCS, claim("steal", pv), namespace="default")
    # externalIPs would make kube-proxy capture traffic to other Services' addresses (CVE-2020-8554).
    apiserver_ip = (await env.superc.get(resources.SERVICES, "kubernetes", namespace="default"))["spec"]["clusterIP"]
    await a.client.create(resources.SERVICES, {"metadata": {"name": "capture"}, "spec": {
        "ports": [{"port": 443}], "externalIPs": [apiserver_ip]}}, namespace="default")
    await a.client.create(resources.SERVICES, {"metadata": {"name": "later"}, "spec": {"ports": [{"port": 443}]}},
                          namespace="default")
    cluster_scoped = [
        (resources.PVS, super_pv(f"sec-a-pv-{tag}")),
        (resources.STORAGECLASSES, {"metadata": {"name": f"sec-a-sc-{tag}"}, "provisioner": "example.com/x"}),
        (resources.PRIORITYCLASSES, {"metadata": {"name": f"sec-a-pc-{tag}",
                                                  "labels": {naming.LABEL_SUPER_PUBLIC: "true"}}, "value": 1000}),
        (resources.CLUSTERROLES, {"metadata": {"name": f"sec-a-cr-{tag}"}, "rules": [
            {"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}]}),
        (resources.NODES, {"metadata": {"name": f"sec-a-node-{tag}", "labels": {naming.LABEL_VIRTUAL_NODE: "true"}}}),
    ]
    for res, body in cluster_scoped:
        await a.client.create(res, body)
    lifted = {"pod-security.kubernetes.io/enforce": "privileged",
              "scheduler.alpha.kubernetes.io/node-selector": "kubernetes.io/hostname=" + env.sc.nodes[0]}
    await a.client.create(resources.NAMESPACES, {"metadata": {"name": "team", "labels": {
        "pod-security.kubernetes.io/enforce": "privileged", "team": "a"}, "annotations": lifted}})
    mine = await running_pod(env, a, "mine", app="shared")

    a_ns = a.id.super_namespace("default")
    child = await syncing.wait_object(env.superc, resources.CONFIGMAPS, "child", namespace=a_ns)
    assert "ownerReferences" not in child["metadata"]
    grab = await syncing.wait_object(env.superc, resources.ENDPOINTS, "grab", namespace=a_ns,
                                     where=lambda e: e.get("subsets"), what="super endpoints of A's grab")
    ips = {addr["ip"] for s in grab["subsets"] for addr in s.get("addresses", []) + s.get("notReadyAddresses", [])}
    assert ips == {mine["status"]["podIP"]}
    stamp = await syncing.wait_object(env.superc, resources.ENDPOINTS, "grab-stamp", namespace=a_ns)
    assert not stamp.get("subsets")
    await syncing.wait_object(env.superc, resources.ENDPOINTS, "alias", namespace=a_ns)
    await super_event(env, a_ns, "steal", "FailedBinding")
    await warning(a, "default", "capture", reason="FailedSync", text="externalIPs is not supported")
    await syncing.wait_object(env.superc, resources.SERVICES, "later", namespace=a_ns)
    await a.client.patch(resources.SERVICES, "later", {"spec": {"externalIPs": [apiserver_ip]}}, namespace="default")
    await warning(a, "default", "later", reason="FailedSync", text="externalIPs is not supported")
    team = await syncing.wait_object(env.superc, resources.NAMESPACES, a.id.super_namespace("team"))
    assert team["metadata"]["labels"]["team"] == "a"
    assert not set(lifted) & (set(team["metadata"].get("labels") or {}) | set(team["metadata"]["annotations"]))
    await syncing.wait_quiet(sx, scans=0)

    assert before == await syncing.super_snapshot(env.superc, b)
    assert slices_before == await endpoint_slices(env, b_ns)
    pv_after = await env.superc.get(resources.PVS, pv)
    assert pv_before["spec"]["claimRef"] == pv_after["spec"]["claimRef"]
    assert pv_after["spec"]["claimRef"]["uid"] == b_pvc["metadata"]["uid"]
    assert (await env.superc.get(resources.PVCS, "steal", namespace=a_ns))["status"]["phase"] == "Pending"
    assert await syncing.get_or_none(a.client, resources.PVS, pv) is None
    leaked = [body["metadata"]["name"] for res, body in cluster_scoped
              if await syncing.get_or_none(env.superc, res, body["metadata"]["name"]) is not None]
    assert [] == leaked
    assert await syncing.get_or_none(env.superc, resources.SERVICES, "capture", namespace=a_ns) is None
    later = await env.superc.get(resources.SERVICES, "later", namespace=a_ns)
    assert "externalIPs" not in later["spec"]
    tried = 2 + 2 + 2 + 1 + 2 + len(cluster_scoped) + len(lifted)
    tally.add("syncer: references to other tenants / super objects (tried / contained)", tried=tried, held=tried)
    tally.add("syncer: super objects compared", tried=len(before) + len(slices_before) + 1,
              held=len(before) + len(slices_before) + 1)


async def _delete_quietly(env: syncing.Env, res: resources.Resource, name: str) -> None:
    with trio.move_on_after(10, shield=True), contextlib.suppress(errors.NotFound):
        await env.superc.delete(res, name)


def pod(name: str, **spec: Any) -> dict[str, Any]:
    body = syncing.pod_manifest(name)
    body["spec"].update(spec)
    return body


@syncing.deadline(200)
async def test_bad_input_gets_an_event_and_breaks_nothing(env: syncing.Env, tally: Tally) -> None:
    """Annotations that overflow once stamped, names that overflow when mapped, non-UTF-8 data and
    pods the super cluster's Pod Security policy forbids: each is refused with a Warning Event
    naming the super cluster's reason (or synced exactly), and both tenants keep syncing."""
    sx = await env.start()
    a, b = await env.tenant(sx, "ba"), await env.tenant(sx, "bb")
    await syncing.wait_object(a.client, resources.SERVICEACCOUNTS, "default", namespace="default")
    a_default = a.id.super_namespace("default")
    inputs = 0

    # Annotations: 100 bytes under the 256 KiB limit in the tenant, over it once stamped.
    fat = {"fat": "a" * (256 * 1024 - len("fat") - 100)}
    await a.client.create(resources.CONFIGMAPS, {"metadata": {"name": "fat", "annotations": fat}},
                          namespace="default")
    fat_pod = pod("fat-pod")
    fat_pod["metadata"]["annotations"] = fat
    await a.client.create(resources.PODS, fat_pod, namespace="default")
    inputs += 2

    # Names: two 63-character namespaces sharing their first 51 characters, a 253-character name.
    long_ns = ["l" * 50 + "-" + c * 12 for c in "ab"]
    long_name = "n" * 253
    for ns in long_ns:
        await a.client.create(resources.NAMESPACES, {"metadata": {"name": ns}})
        await a.client.create(resources.CONFIGMAPS, {"metadata": {"name": "same"}, "data": {"ns": ns}}, namespace=ns)
    await a.client.create(resources.CONFIGMAPS, {"metadata": {"name": long_name}}, namespace="default")
    inputs += 3

    # Bytes that are not UTF-8, in ConfigMap binaryData and Secret data.
    blob = base64.b64encode(b"\xff\xfe\x00\x80\xc3\x28 not utf-8 \xed\xa0\x80").decode()
    await a.client.create(resources.CONFIGMAPS, {"metadata": {"name": "bin"}, "binaryData": {"blob": blob},
                                                 "data": {"text": "ünïcödé ✓"}}, namespace="default")
    await a.client.create(resources.SECRETS, {"metadata": {"name": "bin"}, "data": {"blob": blob}}, namespace="default")
    inputs += 2

    # Pod Security: the super namespace enforces `baseline` (set by the super admin); the tenant's
    # own `privileged` label on its namespace must not lift it.
    await a.client.create(resources.NAMESPACES, {"metadata": {"name": "guarded", "labels": {
        "pod-security.kubernetes.io/enforce": "privileged"}}})
    guarded = a.id.super_namespace("guarded")
    await syncing.wait_object(env.superc, resources.NAMESPACES, guarded)
    await syncing.wait_object(a.client, resources.SERVICEACCOUNTS, "default", namespace="guarded")
    await run_kubectl(env.sc.kubectl, env.sc.kubeconfig, "label", "namespace", guarded,
                      "pod-security.kubernetes.io/enforce=baseline", "--overwrite")
    forbidden = {
        "hostnet": pod("hostnet", hostNetwork=True),
        "hostpath": pod("hostpath", volumes=[{"name": "etc", "hostPath": {"path": "/etc"}}]),
        "privileged": pod("privileged", containers=[{"name": "main", "image": "nginx",
                                                     "securityContext": {"privileged": True}}]),
        "hostpid": pod("hostpid", hostPID=True),
    }
    for body in forbidden.values():
        await a.client.create(resources.PODS, body, namespace="guarded")
    await a.client.create(resources.PODS, pod("plain"), namespace="guarded")
    inputs += len(forbidden)

    # A projected serviceAccountToken of its own: left to the super kubelet it would hold a super
    # token; it must get a token of the tenant instead, with the audience it asked for.
    await a.client.create(resources.PODS, pod("super-token", volumes=[{"name": "vault", "projected": {"sources": [
        {"serviceAccountToken": {"audience": "vault", "path": "token"}}]}}]), namespace="default")
    inputs += 1

    # A ConfigMap named like the super copy of the tenant's root CA (it would replace that copy),
    # a legacy token Secret (the super token controller would fill its copy with a super token),
    # and a system-critical Pod (in the super cluster it could preempt every other tenant's Pods).
    root_ca = await syncing.wait_object(env.superc, resources.CONFIGMAPS, "tenant-kube-root-ca.crt",
                                        namespace=a_default)
    await a.client.create(resources.CONFIGMAPS, {"metadata": {"name": "tenant-kube-root-ca.crt"},
                                                 "data": {"ca.crt": "forged"}}, namespace="default")
    await a.client.create(resources.SECRETS, {"metadata": {"name": "sa-token", "annotations": {
        naming.ANNOTATION_SERVICE_ACCOUNT_NAME: "default"}}, "type": naming.SECRET_TYPE_SA_TOKEN},
        namespace="default")
    await a.client.create(resources.PODS, pod("critical", priorityClassName="system-node-critical"),
                          namespace="kube-system")
    inputs += 3

    # The refusals, as the tenant sees them.
    await warning(a, "default", "tenant-kube-root-ca.crt", reason="FailedSync", text="reserved")
    for name in ("fat", "fat-pod"):
        await warning(a, "default", name, reason="FailedSync", text="refused by the super cluster")
    for name in forbidden:
        await warning(a, "guarded", name, reason="FailedSync", text="violates PodSecurity")
    projected = await syncing.wait_object(env.superc, resources.PODS, "super-token", namespace=a_default)
    (vault,) = [v for v in projected["spec"]["volumes"] if v["name"] == "vault"]
    ((source,),) = [vault["projected"]["sources"]]
    assert "serviceAccountToken" not in source
    token_secret = await env.superc.get(resources.SECRETS, source["secret"]["name"], namespace=a_default)
    claims = jwt_claims(base64.b64decode(token_secret["data"][source["secret"]["items"][0]["key"]]))
    assert claims["aud"] == ["vault"]
    assert claims["sub"] == "system:serviceaccount:default:default"
    assert claims["kubernetes.io"]["pod"]["name"] == "super-token"  # bound to the tenant Pod
    # What was accepted is exact.
    for ns in long_ns:
        sns = a.id.super_namespace(ns)
        assert len(sns) <= 63 and sns != a.id.super_namespace(long_ns[0] if ns == long_ns[1] else long_ns[1])
        ns_obj = await syncing.wait_object(env.superc, resources.NAMESPACES, sns)
        assert ns_obj["metadata"]["annotations"][naming.ANNOTATION_NAMESPACE] == ns
        same = await syncing.wait_object(env.superc, resources.CONFIGMAPS, "same", namespace=sns)
        assert same["data"] == {"ns": ns}
    await syncing.wait_object(env.superc, resources.CONFIGMAPS, long_name, namespace=a_default)
    cm = await syncing.wait_object(env.superc, resources.CONFIGMAPS, "bin", namespace=a_default)
    assert (cm["binaryData"], cm["data"]) == ({"blob": blob}, {"text": "ünïcödé ✓"})
    secret = await syncing.wait_object(env.superc, resources.SECRETS, "bin", namespace=a_default)
    assert secret["data"] == {"blob": blob}
    await syncing.wait_object(env.superc, resources.PODS, "plain", namespace=guarded,
                              where=lambda p: p.get("status", {}).get("phase") == "Running")
    critical = await syncing.wait_object(env.superc, resources.PODS, "critical",
                                         namespace=a.id.super_namespace("kube-system"))
    assert "priorityClassName" not in critical["spec"] and not critical["spec"].get("priority")
    # Nothing else broke: both tenants still sync new objects.
    for t in (a, b):
        await t.client.create(resources.CONFIGMAPS, {"metadata": {"name": "alive"}}, namespace="default")
        await syncing.wait_object(env.superc, resources.CONFIGMAPS, "alive", namespace=t.id.super_namespace("default"))
    await syncing.wait_quiet(sx, scans=0)
    refused = [(res, ns, name) for res, ns, name in (
        *((resources.CONFIGMAPS, a_default, "fat"), (resources.PODS, a_default, "fat-pod"),
          ),
        *((resources.PODS, guarded, name) for name in forbidden),
    ) if await syncing.get_or_none(env.superc, res, name, namespace=ns) is not None]
    assert [] == refused
    assert root_ca == await env.superc.get(resources.CONFIGMAPS, "tenant-kube-root-ca.crt", namespace=a_default)
    assert [] == [s["metadata"]["name"] for s in (await env.superc.list(resources.SECRETS, namespace=a_default)).items
                  if s.get("type") == naming.SECRET_TYPE_SA_TOKEN or s["metadata"]["name"] == "sa-token"]
    ns_obj = await env.superc.get(resources.NAMESPACES, guarded)
    assert ns_obj["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "baseline"
    tally.add("syncer: bad inputs (tried / refused with an Event or synced exactly)", tried=inputs, held=inputs)
