"""Super copies of tenant RuntimeClasses (pure parts)."""

from __future__ import annotations

from appliance.syncer import runtimeclasses
from appliance.util import naming


def test_super_copy_keeps_what_admission_and_scheduling_read_and_names_the_tenant() -> None:
    """Handler, overhead and scheduling are copied as written; the name carries the tenant key;
    an over-long name is shortened to a stable hash."""
    rc = {"metadata": {"name": "gvisor", "uid": "u", "resourceVersion": "7", "labels": {"team": "a"}},
          "handler": "runsc", "overhead": {"podFixed": {"cpu": "10m"}},
          "scheduling": {"nodeSelector": {"sandbox": "yes"}}}
    copy = runtimeclasses.super_copy("ns-abc123-t", rc)
    assert copy["metadata"]["name"] == "ns-abc123-t-gvisor"
    assert copy["metadata"]["labels"] == {naming.LABEL_CLUSTER: "ns-abc123-t"}
    assert copy["metadata"]["annotations"][naming.ANNOTATION_RUNTIME_CLASS] == "gvisor"
    assert (copy["handler"], copy["overhead"], copy["scheduling"]) == (rc["handler"], rc["overhead"], rc["scheduling"])
    assert "overhead" not in runtimeclasses.super_copy("k", {"metadata": {"name": "plain"}, "handler": "runc"})
    long_name = naming.super_runtime_class("k" * 40, "x" * 240)
    assert len(long_name) <= 253 and long_name == naming.super_runtime_class("k" * 40, "x" * 240)


def test_a_copy_is_the_same_when_handler_overhead_and_scheduling_are() -> None:
    a = {"metadata": {"name": "a"}, "handler": "runc", "overhead": {"podFixed": {"cpu": "10m"}}}
    assert runtimeclasses.same_copy({**a, "metadata": {"name": "b", "uid": "x"}}, a)
    assert not runtimeclasses.same_copy({**a, "handler": "runsc"}, a)
    assert not runtimeclasses.same_copy({"metadata": {}, "handler": "runc"}, a)
