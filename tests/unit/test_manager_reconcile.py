"""Pure decisions of the VirtualCluster reconciler: steps, validation, status patches."""

from __future__ import annotations

from typing import Any

import pytest

from appliance.manager import model, reconcile
from appliance.manager.model import Condition, VirtualCluster
from appliance.manager.reconcile import Step

NOW = "2025-01-01T00:00:00Z"
LATER = "2025-01-01T00:05:00Z"


def vc(
    *, phase: str = "", finalizers: tuple[str, ...] = ("virtualcluster.finalizer.process",), deleting: bool = False,
    generation: int = 1, observed: int | None = 1, retries: int | None = 3, message: str = "",
    reason: str = "", annotations: dict[str, str] | None = None, provisioner: str = "", **spec: Any,
) -> VirtualCluster:
    return model.decode_vc({
        "metadata": {"name": "vc1", "namespace": "ns", "uid": "d64ea0c0-91f8-46f5-8643-c0cab32ab0cd",
                     "generation": generation, "finalizers": list(finalizers),
                     "deletionTimestamp": NOW if deleting else None, "annotations": annotations or {}},
        "spec": {"clusterVersionName": "cv", **spec},
        "status": {"phase": phase, "retriesLeft": retries, "observedGeneration": observed, "message": message,
                   "reason": reason, "provisioner": provisioner},
    })


@pytest.mark.parametrize(("obj", "step"), [
    pytest.param(vc(deleting=True), Step.TEARDOWN, id="deleting-with-finalizer"),
    pytest.param(vc(deleting=True, finalizers=()), Step.NOTHING, id="deleting-without-finalizer"),
    pytest.param(vc(finalizers=()), Step.ADD_FINALIZER, id="finalizer-first"),
    pytest.param(vc(finalizers=("other",)), Step.ADD_FINALIZER, id="foreign-finalizer-only"),
    pytest.param(vc(), Step.INITIALISE, id="new"),
    pytest.param(vc(phase="Pending"), Step.PROVISION, id="pending"),
    pytest.param(vc(phase="Pending", retries=0), Step.GIVE_UP, id="pending-no-retries"),
    pytest.param(vc(phase="Running"), Step.ENSURE, id="running"),
    pytest.param(vc(phase="Updating"), Step.ENSURE, id="updating"),
    pytest.param(vc(phase="Error"), Step.NOTHING, id="error-unchanged"),
    pytest.param(vc(phase="Error", generation=2), Step.RESTART, id="error-spec-changed"),
])
def test_next_step(obj: VirtualCluster, step: Step) -> None:
    """The level-triggered decision follows the phase table."""
    assert reconcile.next_step(obj, provisioner="process") is step


def test_error_for_missing_cluster_version_restarts_once_it_exists() -> None:
    """An Error caused by a missing ClusterVersion is retried when that ClusterVersion appears."""
    obj = vc(phase="Error", reason="ClusterVersionNotFound")
    assert reconcile.next_step(obj, provisioner="process") is Step.NOTHING
    assert reconcile.next_step(obj, provisioner="process", cluster_version_found=True) is Step.RESTART
    other = vc(phase="Error", reason="InvalidServiceCidr")
    assert reconcile.next_step(other, provisioner="process", cluster_version_found=True) is Step.NOTHING


def test_invalid_provisioner_adds_no_finalizer() -> None:
    """Without a valid provisioner there is no finalizer to add; the VC is initialised (to Error)."""
    assert reconcile.next_step(vc(finalizers=()), provisioner=None) is Step.INITIALISE


@pytest.mark.parametrize(("message", "left"), [
    pytest.param("retry: 2", 2, id="original-format"),
    pytest.param("retry:0", 0, id="no-space"),
    pytest.param("fail to create", 3, id="no-colon"),
    pytest.param("retry: x", 3, id="garbage"),
])
def test_retries_left_reads_the_original_message_defensively(message: str, left: int) -> None:
    """Without `retriesLeft`, the original's "retry: N" message is parsed, never crashing."""
    assert reconcile.retries_left(vc(retries=None, message=message)) == left


@pytest.mark.parametrize(("annotations", "cv_annotations", "status", "want"), [
    pytest.param({}, None, "", ("process", None), id="default"),
    pytest.param({}, {model.ANNOTATION_PROVISIONER: "native"}, "", ("native", None), id="cluster-version"),
    pytest.param({model.ANNOTATION_PROVISIONER: "import"}, {model.ANNOTATION_PROVISIONER: "native"}, "",
                 ("import", None), id="vc-annotation-wins"),
    pytest.param({model.ANNOTATION_PROVISIONER: "import"}, None, "native", ("native", None), id="status-is-fixed"),
])
def test_choose_provisioner(annotations: dict[str, str], cv_annotations: dict[str, str] | None, status: str,
                            want: tuple[str, None]) -> None:
    """Status, then VC annotation, then ClusterVersion annotation, then the default."""
    cv = None if cv_annotations is None else {"metadata": {"name": "cv", "annotations": cv_annotations}}
    assert reconcile.choose_provisioner(vc(annotations=annotations, provisioner=status), cv, default="process") == want


def test_choose_provisioner_rejects_unknown_names() -> None:
    """An unknown provisioner name is bad input that names its source."""
    name, problem = reconcile.choose_provisioner(
        vc(annotations={model.ANNOTATION_PROVISIONER: "aliyun"}), None, default="process")
    assert name is None
    assert problem is not None
    assert problem.reason == "UnknownProvisioner"
    assert "annotation tenancy.x-k8s.io/provisioner is 'aliyun'" in problem.message


@pytest.mark.parametrize(("text", "want", "error"), [
    pytest.param("", "10.32.0.0/16", None, id="default"),
    pytest.param("10.96.0.0/12", "10.96.0.0/12", None, id="widest-v4"),
    pytest.param("10.96.0.0/28", "10.96.0.0/28", None, id="narrowest-v4"),
    pytest.param(" 10.0.0.0/16 , fd00::/108 ", "10.0.0.0/16,fd00::/108", None, id="dual-stack"),
    pytest.param("10.0.0.0/8", "", "prefix length must be between /12 and /28", id="too-wide"),
    pytest.param("10.0.0.1/16", "", "has host bits set", id="host-bits"),
    pytest.param("banana", "", "does not appear to be an IPv4 or IPv6 network", id="garbage"),
    pytest.param("10.0.0.0/16,10.1.0.0/16", "", "two ranges of the same IP family", id="same-family"),
    pytest.param("10.0.0.0/16,fd00::/108,fd01::/108", "", "at most two ranges", id="three"),
])
def test_parse_service_cidr(text: str, want: str, error: str | None) -> None:
    """`spec.serviceCidr` is honoured when kube-apiserver would accept it, and refused with the reason."""
    got, problem = reconcile.parse_service_cidr(text)
    assert got == want
    if error is None:
        assert problem is None
    else:
        assert problem is not None
        assert problem.reason == "InvalidServiceCidr"
        assert error in problem.message


@pytest.mark.parametrize(("kwargs", "key", "provisioner", "cv", "reason"), [
    pytest.param({}, "ns-abc-vc1", "process", {}, None, id="ok"),
    pytest.param({}, "ns-abc-vc1", "process", None, "ClusterVersionNotFound", id="missing-cv"),
    pytest.param({}, "ns-abc-vc1", "import", None, None, id="import-needs-no-cv"),
    pytest.param({}, "Bad_Key", "process", {}, "InvalidClusterNamespace", id="bad-key"),
    pytest.param({}, "k" * 64, "process", {}, "InvalidClusterNamespace", id="long-key"),
    pytest.param({"clusterDomain": "Corp_Local"}, "ns-abc-vc1", "process", {}, "InvalidClusterDomain",
                 id="bad-domain"),
    pytest.param({"serviceCidr": "x"}, "ns-abc-vc1", "process", {}, "InvalidServiceCidr", id="bad-cidr"),
])
def test_validate(kwargs: dict[str, str], key: str, provisioner: str, cv: dict[str, Any] | None,
                  reason: str | None) -> None:
    """Validation finds the first bad input."""
    problem = reconcile.validate(vc(**kwargs), provisioner=provisioner, cluster_key=key, cluster_version=cv)
    assert (problem.reason if problem else None) == reason


def test_set_condition_moves_transition_time_only_on_status_change() -> None:
    """Re-asserting a condition keeps its transition time; flipping it moves the time."""
    first = reconcile.set_condition([], type_="Ready", status="False", reason="A", message="a", now=NOW)
    same = reconcile.set_condition(first, type_="Ready", status="False", reason="B", message="b", now=LATER)
    flipped = reconcile.set_condition(same, type_="Ready", status="True", reason="C", message="c", now=LATER)
    assert same[0].last_transition_time == NOW
    assert same[0].reason == "B"
    assert flipped[0].last_transition_time == LATER
    other = reconcile.set_condition(flipped, type_="Healthy", status="True", reason="H", message="h", now=LATER)
    assert [c.type for c in other] == ["Ready", "Healthy"]


def test_initialise_sets_key_budget_and_pending() -> None:
    """Phase "" becomes Pending with the cluster key, the provisioner and three attempts."""
    patch = reconcile.initialise(vc(retries=None, observed=None), cluster_key="ns-fd1b34-vc1",
                                 provisioner="process", now=NOW)
    body = patch.body()["status"]
    assert body["phase"] == "Pending"
    assert body["reason"] == "ClusterCreating"
    assert body["clusterNamespace"] == "ns-fd1b34-vc1"
    assert body["retriesLeft"] == 3
    assert body["provisioner"] == "process"
    assert body["observedGeneration"] == 1
    assert body["conditions"] == [{"type": "Ready", "status": "False", "reason": "ClusterCreating",
                                   "message": "creating the tenant control plane", "lastTransitionTime": NOW}]


def test_failed_attempts_spend_the_budget_then_error() -> None:
    """Each failure decrements retriesLeft; the last one turns the phase to Error."""
    second = reconcile.attempt_failed(vc(phase="Pending", retries=3), error="boom", now=NOW)
    assert (second.phase, second.retries_left, second.reason) == ("Pending", 2, "TenantControlPlaneCreateFailed")
    assert second.message == "fail to create virtualcluster(vc1): boom; 2 retries left"
    last = reconcile.attempt_failed(vc(phase="Pending", retries=1), error="boom", now=NOW)
    assert (last.phase, last.retries_left, last.reason) == ("Error", 0, "TenantControlPlaneError")
    assert last.message == "fail to create virtualcluster(vc1) after 3 attempts: boom"


def test_running_and_rejected() -> None:
    """Running is Ready=True; rejected input is Error with the problem as reason and message."""
    running = reconcile.running(vc(phase="Pending"), message="up", now=NOW)
    assert (running.phase, running.reason, running.message) == ("Running", "TenantControlPlaneRunning", "up")
    assert running.conditions[0].status == "True"  # type: ignore[index]
    problem = reconcile.Problem("InvalidServiceCidr", "bad")
    rejected = reconcile.rejected(vc(), problem, now=NOW, cluster_key="k", provisioner="process")
    assert (rejected.phase, rejected.reason, rejected.message, rejected.retries_left) == (
        "Error", "InvalidServiceCidr", "bad", 0)
    assert rejected.cluster_namespace == "k"
    assert rejected.provisioner == "process"


def test_health_condition_reports_restarts_and_is_quiet_when_unchanged() -> None:
    """ControlPlaneHealthy names restarted processes, and an unchanged state writes nothing."""
    procs = [reconcile.ProcessState("kube-apiserver", 0, None),
             reconcile.ProcessState("kube-controller-manager", 0, None)]
    patch = reconcile.health(vc(phase="Running"), procs, now=NOW)
    cond = patch.conditions[0]  # type: ignore[index]
    assert (cond.type, cond.reason, cond.message) == (
        "ControlPlaneHealthy", "ProcessesRunning", "running: kube-apiserver, kube-controller-manager")
    current = vc(phase="Running")
    current.status.conditions = [cond]
    assert reconcile.health(current, procs, now=LATER).is_empty()
    crashed = [reconcile.ProcessState("kube-apiserver", 2, -9), procs[1]]
    cond2 = reconcile.health(current, crashed, now=LATER).conditions[0]  # type: ignore[index]
    assert cond2.reason == "ProcessRestarted"
    assert cond2.message == "kube-apiserver restarted 2 time(s), last exit code -9"


def test_differs_ignores_condition_timestamps() -> None:
    """A patch equal to the status except for transition times is not worth a write."""
    current = vc(phase="Running")
    current.status.conditions = [Condition(type="Ready", status="True", reason="R", message="m",
                                           last_transition_time=NOW)]
    same = model.StatusPatch(phase="Running", conditions=[
        Condition(type="Ready", status="True", reason="R", message="m", last_transition_time=LATER)])
    assert not reconcile.differs(current, same)
    assert reconcile.differs(current, model.StatusPatch(phase="Error"))


def test_status_patch_omits_unset_fields() -> None:
    """Only the fields a patch sets are part of the merge patch."""
    assert model.StatusPatch(phase="Running").body() == {"status": {"phase": "Running"}}
    assert model.StatusPatch().is_empty()
