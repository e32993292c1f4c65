"""Pure decisions of PersistentVolume back-population and Ingress back-population."""

from __future__ import annotations

from typing import Any

from appliance.syncer.resources import ingress, volumes
from appliance.syncer.tenant import Tenant, TenantId
from appliance.util import naming
from tests.unit.syncer_stubs import StubCache, StubSyncer, StubTenant, super_namespace

KEY = "t1"
SUPER_NS = naming.super_namespace(KEY, "shop")


def ppv(name: str = "pv-1", *, claim: str = "data", claim_uid: str = "super-pvc-uid", **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {"name": name, "uid": f"uid-{name}", "resourceVersion": "7",
                         "finalizers": ["kubernetes.io/pv-protection"], "annotations": {"a": "b"}},
            "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"], "hostPath": {"path": "/x"},
                     "claimRef": {"kind": "PersistentVolumeClaim", "namespace": SUPER_NS, "name": claim,
                                  "uid": claim_uid, "resourceVersion": "3"}, **spec},
            "status": {"phase": "Bound"}}


def pvc(namespace: str, uid: str, **annotations: str) -> dict[str, Any]:
    return {"metadata": {"name": "data", "namespace": namespace, "uid": uid, "annotations": annotations}}


SUPER_PVC = pvc(SUPER_NS, "super-pvc-uid", **{naming.ANNOTATION_CLUSTER: KEY, naming.ANNOTATION_UID: "tenant-pvc-uid"})
TENANT_PVC = pvc("shop", "tenant-pvc-uid")


def setup(tenant_pvs: list[dict[str, Any]], super_pvs: list[dict[str, Any]]) -> tuple[StubSyncer, StubTenant]:
    t = StubTenant(KEY, {"persistentvolume": StubCache(tenant_pvs), "persistentvolumeclaim": StubCache([TENANT_PVC])})
    other = StubTenant("t2", {"persistentvolume": StubCache(), "persistentvolumeclaim": StubCache()})
    sx = StubSyncer(tenants=[t, other], namespaces=[super_namespace(KEY, "shop")],
                    caches={"persistentvolume": super_pvs, "persistentvolumeclaim": [SUPER_PVC]})
    return sx, t


def test_tenant_pv_is_prebound_to_the_tenant_claim() -> None:
    """The copy is reset, remembers the super PV's UID and claims the tenant PVC by namespace and UID."""
    vpv = volumes.tenant_pv(ppv(), TENANT_PVC)
    assert vpv["metadata"] == {"name": "pv-1", "annotations": {"a": "b", naming.ANNOTATION_UID: "uid-pv-1"}}
    assert vpv["spec"]["claimRef"] == {"kind": "PersistentVolumeClaim", "namespace": "shop", "name": "data",
                                       "uid": "tenant-pvc-uid"}
    assert vpv["spec"]["hostPath"] == {"path": "/x"}
    assert "status" not in vpv


def test_spec_patch_excludes_the_claim_ref() -> None:
    """Capacity changes are pushed; the claimRef, which the tenant binder owns, is not compared."""
    vpv = volumes.tenant_pv(ppv(), TENANT_PVC)
    assert volumes.spec_patch(vpv, ppv()) is None
    assert volumes.spec_patch(vpv, ppv(capacity={"storage": "2Gi"})) == {"spec": {"capacity": {"storage": "2Gi"}}}


def test_bound_claim_needs_a_tenant_owned_super_claim_with_the_claim_uid() -> None:
    """A PV belongs to the tenant owning its claimRef's super PVC, and only to the PVC of that UID."""
    sx, _ = setup([], [])
    assert volumes.bound_claim(sx, ppv()) == volumes.Claim(KEY, "shop", "data")  # type: ignore[arg-type]
    assert volumes.bound_claim(sx, ppv(claim_uid="earlier")) is None  # type: ignore[arg-type]
    assert volumes.bound_claim(sx, ppv(claim="other")) is None  # type: ignore[arg-type]
    unbound = ppv()
    del unbound["spec"]["claimRef"]
    assert volumes.bound_claim(sx, unbound) is None  # type: ignore[arg-type]
    kind = volumes.PersistentVolumeKind()
    assert list(kind.owners(sx, ppv())) == [KEY]  # type: ignore[arg-type]


def test_patrol_creates_updates_and_deletes_only_syncer_made_pvs() -> None:
    """Missing or outdated copies and copies of vanished super PVs are requeued; tenant-made PVs never."""
    kind = volumes.PersistentVolumeKind()
    current = volumes.tenant_pv(ppv("pv-same"), TENANT_PVC)
    outdated = volumes.tenant_pv(ppv("pv-grown"), TENANT_PVC)
    orphan = volumes.tenant_pv(ppv("pv-gone"), TENANT_PVC)
    own = {"metadata": {"name": "mine", "uid": "u"}, "spec": {"capacity": {"storage": "1Gi"}}}
    for pv in (current, outdated, orphan):
        pv["metadata"]["uid"] = "tenant-" + pv["metadata"]["name"]
    sx, _ = setup([current, outdated, orphan, own],
                  [ppv("pv-new"), ppv("pv-same"), ppv("pv-grown", capacity={"storage": "5Gi"})])
    kind.scan(sx)  # type: ignore[arg-type]
    assert sorted(k for _, t, k in sx.queued) == [("", "pv-gone"), ("", "pv-grown"), ("", "pv-new")]
    assert {t for _, t, _ in sx.queued} == {KEY}


def test_super_pv_deletion_reaches_the_tenant_holding_its_copy() -> None:
    """When a super PV goes (its claim perhaps with it), the tenant with our copy is told."""
    kind = volumes.PersistentVolumeKind()
    copy_ = volumes.tenant_pv(ppv(), TENANT_PVC)
    sx, _ = setup([copy_], [])
    sx.caches["persistentvolumeclaim"] = StubCache()  # the claim is gone too
    kind.on_super_event(sx, "DELETED", None, ppv())  # type: ignore[arg-type]
    assert sx.queued == [("persistentvolume", KEY, ("", "pv-1"))]


def test_ingress_patches_follow_spec_down_and_status_up() -> None:
    """Tenant spec changes go down; super status and transparent annotations come up."""
    tenant = Tenant(TenantId(key=KEY, vc_name="vc", vc_namespace="ns", vc_uid="u"), client=None)  # type: ignore[arg-type]
    rule = {"host": "a.example", "http": {"paths": [{"path": "/", "pathType": "Prefix", "backend": {
        "service": {"name": "web", "port": {"number": 80}}}}]}}
    vobj = {"metadata": {"name": "i"}, "spec": {"rules": [rule]}}
    pobj = {"metadata": {"name": "i", "annotations": {naming.ANNOTATION_TRANSPARENT_CLUSTER_IP: "x", "other": "y"}},
            "spec": {"rules": []}, "status": {"loadBalancer": {"ingress": [{"ip": "10.0.0.1"}]}}}
    assert ingress.spec_patch(vobj, pobj) == {"spec": {"rules": [rule]}}
    meta, status = ingress.upward_patches(tenant, vobj, pobj)
    assert meta == {"metadata": {"annotations": {naming.ANNOTATION_TRANSPARENT_CLUSTER_IP: "x"}}}
    assert status == {"status": {"loadBalancer": {"ingress": [{"ip": "10.0.0.1"}]}}}
