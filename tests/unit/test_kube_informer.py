"""Tests for the pure parts of appliance.kube.informer: relist diff and the raw store."""

from __future__ import annotations

import msgspec
import pytest

from appliance.kube import wire
from appliance.kube.informer import Change, Store, relist_diff


def obj(name: str, rv: str, namespace: str = "ns", **extra: object) -> bytes:
    meta = {"name": name, "namespace": namespace, "resourceVersion": rv}
    return msgspec.json.encode({"kind": "Pod", "apiVersion": "v1", "metadata": meta, **extra})


def event(event_type: str, raw: bytes) -> wire.RawWatchEvent:
    meta = wire.meta_of(raw)
    return wire.RawWatchEvent(
        type=event_type,
        object=raw,
        resource_version=meta.resource_version,
        namespace=meta.namespace,
        name=meta.name,
    )


def test_relist_diff() -> None:
    """Keys split into added, modified (resourceVersion changed) and deleted; equal ones vanish."""
    old = {("a", "same"): "1", ("a", "changed"): "2", ("a", "gone"): "3"}
    new = {("a", "same"): "1", ("a", "changed"): "5", ("b", "new"): "6"}
    assert ([("b", "new")], [("a", "changed")], [("a", "gone")]) == relist_diff(old, new)


def test_relist_diff_empty() -> None:
    """Identical snapshots produce no changes at all."""
    snapshot = {("", "n1"): "10", ("", "n2"): "11"}
    assert ([], [], []) == relist_diff(snapshot, dict(snapshot))


def test_store_first_list_adds_everything() -> None:
    """Filling an empty store reports every object as ADDED."""
    store = Store()
    changes = store.replace([obj("a", "1"), obj("b", "2")])
    assert ["ADDED", "ADDED"] == [c.type for c in changes]
    assert 2 == len(store)
    assert obj("a", "1") == store.get(("ns", "a"))


def test_store_relist_reports_only_difference() -> None:
    """A relist after a 410 reports new, changed and vanished objects once each."""
    store = Store()
    store.replace([obj("keep", "1"), obj("change", "2"), obj("vanish", "3")])
    changes = store.replace([obj("keep", "1"), obj("change", "7"), obj("new", "8")])
    assert [
        Change("DELETED", ("ns", "vanish"), None, obj("vanish", "3")),
        Change("ADDED", ("ns", "new"), obj("new", "8"), None),
        Change("MODIFIED", ("ns", "change"), obj("change", "7"), obj("change", "2")),
    ] == changes
    assert {("ns", "keep"), ("ns", "change"), ("ns", "new")} == set(store.keys())


def test_store_apply_sequence() -> None:
    """ADDED, MODIFIED and DELETED events update the store and report old and new bytes."""
    store = Store()
    assert Change("ADDED", ("ns", "p"), obj("p", "1"), None) == store.apply(
        event("ADDED", obj("p", "1"))
    )
    assert Change("MODIFIED", ("ns", "p"), obj("p", "2"), obj("p", "1")) == store.apply(
        event("MODIFIED", obj("p", "2"))
    )
    final = obj("p", "3", status={"phase": "Succeeded"})
    assert Change("DELETED", ("ns", "p"), None, final) == store.apply(event("DELETED", final))
    assert 0 == len(store)


@pytest.mark.parametrize(
    ("first", "second"),
    [
        pytest.param("ADDED", "ADDED", id="added-twice"),
        pytest.param("ADDED", "MODIFIED", id="modified-same-version"),
    ],
)
def test_store_drops_duplicates(first: str, second: str) -> None:
    """An event for the version already cached (e.g. replayed after a relist) is dropped."""
    store = Store()
    store.apply(event(first, obj("p", "5")))
    assert None is store.apply(event(second, obj("p", "5")))


def test_store_normalises_types() -> None:
    """ADDED for a cached key reports MODIFIED; MODIFIED for an unknown key reports ADDED."""
    store = Store()
    change = store.apply(event("MODIFIED", obj("p", "1")))
    assert change is not None
    assert "ADDED" == change.type
    change = store.apply(event("ADDED", obj("p", "2")))
    assert change is not None
    assert "MODIFIED" == change.type


def test_store_delete_unknown_is_noop() -> None:
    """Deleting a key the cache never held reports nothing."""
    assert None is Store().apply(event("DELETED", obj("p", "1")))


def test_store_refuses_bookmarks() -> None:
    """Bookmarks advance the informer's version; they are not store changes."""
    with pytest.raises(ValueError, match="BOOKMARK"):
        Store().apply(event("BOOKMARK", obj("", "9", namespace="")))


def test_cluster_scoped_keys() -> None:
    """Cluster-scoped objects are keyed with an empty namespace."""
    store = Store()
    store.replace([obj("node-1", "1", namespace="")])
    assert [("", "node-1")] == store.keys()


def test_cache_drops_managed_fields_and_keeps_everything_else() -> None:
    """The informer cache strips metadata.managedFields (memory) and nothing else."""
    import msgspec

    from appliance.kube import informer

    obj = {"metadata": {"name": "a", "managedFields": [{"manager": "x"}], "labels": {"k": "v"}},
           "spec": {"x": 1}, "unknownField": {"kept": True}}
    out = msgspec.json.decode(informer.compact(msgspec.json.encode(obj)))
    assert {"metadata": {"name": "a", "labels": {"k": "v"}}, "spec": {"x": 1}, "unknownField": {"kept": True}} == out
    plain = msgspec.json.encode({"metadata": {"name": "b"}})
    assert informer.compact(plain) is plain


def test_raw_handlers_get_the_cached_bytes_and_dict_handlers_fresh_dicts() -> None:
    """A raw handler sees each change as the cache holds it (managedFields dropped), undecoded;
    dict handlers of the same informer still get decoded objects."""
    from appliance.kube.informer import Informer
    from appliance.kube.resources import PODS

    inf = Informer(None, PODS)  # type: ignore[arg-type]  # no I/O: only _emit is called
    raw_seen: list[tuple[str, bytes | None, bytes | None]] = []
    dict_seen: list[tuple[str, object, object]] = []
    inf.add_raw_handler(lambda t, new, old: raw_seen.append((t, new, old)))
    inf.add_handler(lambda t, new, old: dict_seen.append((t, new, old)))
    store = Store()
    first = obj("p", "1")
    change = store.apply(event("ADDED", first))
    assert change is not None
    inf._emit(change)
    assert raw_seen == [("ADDED", change.new, None)] and isinstance(raw_seen[0][1], bytes)
    assert dict_seen == [("ADDED", msgspec.json.decode(first), None)]

