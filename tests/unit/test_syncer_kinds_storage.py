"""Pure decisions of the super-sourced kinds StorageClass and PriorityClass, and kind selection."""

from __future__ import annotations

from typing import Any

import pytest

from appliance.syncer.resources import all_kinds, sourced, storage
from appliance.util import naming
from tests.unit.syncer_stubs import StubCache, StubSyncer, StubTenant

PUBLIC = {naming.LABEL_SUPER_PUBLIC: "true"}


def sc(name: str, *, labels: dict[str, str] | None = None, **content: Any) -> dict[str, Any]:
    return {"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
            "metadata": {"name": name, "uid": f"uid-{name}", "resourceVersion": "5", "labels": labels or {},
                         "creationTimestamp": "2024-01-01T00:00:00Z", "finalizers": ["x"]},
            "provisioner": "example.com/p", "reclaimPolicy": "Delete", **content}


def test_tenant_copy_resets_metadata_and_keeps_labels() -> None:
    """The tenant copy keeps name, labels (the public label included) and content, nothing cluster-bound."""
    copy = sourced.tenant_copy({**sc("fast", labels=PUBLIC), "status": {"x": 1}})
    assert copy["metadata"] == {"name": "fast", "labels": PUBLIC}
    assert (copy["provisioner"], copy["reclaimPolicy"]) == ("example.com/p", "Delete")
    assert "status" not in copy


@pytest.mark.parametrize(("tenant", "super_", "expected"), [
    pytest.param(sc("a"), sc("a", labels=PUBLIC), None, id="metadata-only-differs"),
    pytest.param(sc("a"), sc("a", allowVolumeExpansion=True), {"allowVolumeExpansion": True}, id="field-added"),
    pytest.param(sc("a", mountOptions=["ro"]), sc("a"), {"mountOptions": None}, id="field-removed"),
    pytest.param(sc("a", parameters={"k": "1"}), sc("a", parameters={"k": "2"}), {"parameters": {"k": "2"}},
                 id="nested-change"),
])
def test_content_patch_ignores_metadata(tenant: dict[str, Any], super_: dict[str, Any], expected: Any) -> None:
    """Only content (everything but apiVersion/kind/metadata/status) is compared and patched."""
    assert expected == storage.content_patch(tenant, super_)


def _sx(tenant_objs: list[dict[str, Any]], super_objs: list[dict[str, Any]], kind: str) -> tuple[StubSyncer, StubTenant]:
    t = StubTenant("t1", {kind: StubCache(tenant_objs)})
    return StubSyncer(tenants=[t, StubTenant("t2", {kind: StubCache()})], caches={kind: super_objs}), t


def test_public_super_objects_go_to_every_tenant() -> None:
    """A public super StorageClass concerns every registered tenant; a non-public one none."""
    kind = storage.StorageClassKind()
    sx, _ = _sx([], [], "storageclass")
    assert sorted(kind.owners(sx, sc("a", labels=PUBLIC))) == ["t1", "t2"]  # type: ignore[arg-type]
    assert list(kind.owners(sx, sc("a"))) == []  # type: ignore[arg-type]
    kind.on_super_event(sx, "ADDED", sc("a", labels=PUBLIC), None)  # type: ignore[arg-type]
    assert sorted(sx.queued) == [("storageclass", "t1", ("", "a")), ("storageclass", "t2", ("", "a"))]


def test_patrol_finds_missing_changed_and_foreign_storage_classes() -> None:
    """Missing and changed copies are requeued, and so is a public-labelled tenant StorageClass
    without a super twin; the tenant's own StorageClasses are left alone."""
    kind = storage.StorageClassKind()
    super_objs = [sc("missing", labels=PUBLIC), sc("changed", labels=PUBLIC, allowVolumeExpansion=True),
                  sc("same", labels=PUBLIC)]
    sx, _ = _sx([sc("changed"), sc("same"), sc("tenant-made"), sc("fake", labels=PUBLIC)], super_objs, "storageclass")
    kind.scan(sx)  # type: ignore[arg-type]
    assert sorted(k for _, t, k in sx.queued if t == "t1") == [("", "changed"), ("", "fake"), ("", "missing")]
    assert sorted(k for _, t, k in sx.queued if t == "t2") == [("", "changed"), ("", "missing"), ("", "same")]


def test_only_public_labelled_priority_classes_are_removed_from_tenants() -> None:
    """A tenant's own PriorityClass stays; a public-labelled one without a super twin is out of sync."""
    kind = storage.PriorityClassKind()
    sx, t = _sx([], [], "priorityclass")
    own = {"metadata": {"name": "mine", "uid": "u"}, "value": 5}
    stale = {"metadata": {"name": "old", "uid": "u", "labels": PUBLIC}, "value": 5}
    assert not kind.out_of_sync(sx, t, own, None)  # type: ignore[arg-type]
    assert kind.out_of_sync(sx, t, stale, None)  # type: ignore[arg-type]
    assert kind.out_of_sync(sx, t, stale, {**stale, "metadata": {"name": "old"}})  # type: ignore[arg-type]


@pytest.mark.parametrize(("extra", "present", "absent"), [
    pytest.param((), {"storageclass", "persistentvolume"}, {"priorityclass", "ingress"}, id="default"),
    pytest.param(("priorityclass",), {"priorityclass"}, {"ingress"}, id="priorityclass"),
    pytest.param(("ingress", "priorityclass"), {"ingress", "priorityclass"}, set(), id="both"),
])
def test_opt_in_kinds_follow_extra_resources(extra: tuple[str, ...], present: set[str], absent: set[str]) -> None:
    """PriorityClass and Ingress are synced only when named in `extra_resources`."""
    names = {k.name for k in all_kinds(extra)}
    assert present <= names
    assert not absent & names


def test_super_informer_selectors() -> None:
    """Synced kinds select our tenancy label, public kinds the public label, PVs everything."""
    kinds = {k.name: k for k in all_kinds(("priorityclass", "ingress"))}
    assert kinds["pod"].super_selector == naming.LABEL_VC_NAME
    assert kinds["ingress"].super_selector == naming.LABEL_VC_NAME
    assert kinds["storageclass"].super_selector == f"{naming.LABEL_SUPER_PUBLIC}=true"
    assert kinds["priorityclass"].super_selector == f"{naming.LABEL_SUPER_PUBLIC}=true"
    assert kinds["persistentvolume"].super_selector is None
