"""A subset of upstream's conformance suite, run in `make test` against a tenant on the real node.

The full suite (`make conformance`, CONFORMANCE.md) runs for over an hour; these are the
tests of what tenants use most — Pods and their lifecycle, logs and exec, DNS for Pods and
Services, ConfigMaps, Secrets, the Downward API, projected volumes, service-account tokens
used from inside a Pod, Deployments, ReplicaSets, Jobs, StatefulSets and kubectl — chosen
from those that pass on this bed, so a regression in any of them fails CI. CONFORMANCE.md
lists the same names (a unit test keeps the two equal).

The tenant is a process-mode VirtualCluster of the real `vc-appliance` on the package's real
node, with the sample tenant CoreDNS installed as a user would; `e2e.test` is upstream's,
built by `python -m appliance.controlplane.build --conformance` (`make test` does that first).
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from appliance.controlplane import build, e2eimages
from appliance.util import naming
from bench import conformance
from tests.realnode import nodebed
from tests.testbed import SuperCluster, wait_for

SAMPLE_DNS = Path(__file__).resolve().parents[2] / "configs" / "samples" / "tenant-coredns.yaml"

#: Each test's name up to its `[Conformance]` tag, as upstream's JUnit report names it.
SUBSET = (
    # Pods, containers, logs, exec
    "[sig-node] Pods should be submitted and removed",
    "[sig-node] Pods should be updated",
    "[sig-node] Pods should run through the lifecycle of Pods and PodStatus",
    "[sig-node] Pods should support remote command execution over websockets",
    "[sig-node] Pods should support retrieving logs from the container over websockets",
    "[sig-node] Pods Extended (pod generation) Pod Generation pod generation should start at 1 and increment per "
    "update [MinimumKubeletVersion:1.34]",
    "[sig-node] Kubelet when scheduling a busybox command in a pod should print the output to logs",
    "[sig-node] Container Runtime blackbox test on terminated container should report termination message from "
    "log output if TerminationMessagePolicy FallbackToLogsOnError is set",
    "[sig-node] InitContainer should invoke init containers on a RestartNever pod",
    "[sig-node] Container Lifecycle Hook when create a pod with lifecycle hook should execute poststart exec hook "
    "properly",
    "[sig-node] Ephemeral Containers should update the ephemeral containers in an existing pod",
    "[sig-node] Security Context When creating a container with runAsUser should run the container with uid 65534 "
    "[LinuxOnly]",
    "[sig-cli] Kubectl logs logs should be able to retrieve and filter logs",
    "[sig-cli] Kubectl client Kubectl label should update the label on a resource",
    # DNS, Services, the apiserver from inside
    "[sig-network] DNS should provide DNS for pods for Hostname",
    "[sig-network] DNS should provide DNS for pods for Subdomain",
    "[sig-network] DNS should support configurable pod DNS nameservers",
    "[sig-network] EndpointSlice should create Endpoints and EndpointSlices for Pods matching a Service",
    "[sig-network] Proxy version v1 A set of valid responses are returned for both pod and service Proxy",
    "[sig-network] API Server should provide secure master service",
    "[sig-auth] ServiceAccounts ServiceAccountIssuerDiscovery should support OIDC discovery of service account issuer",
    "[sig-auth] ServiceAccounts should guarantee kube-root-ca.crt exist in any namespace",
    "[sig-network] Services should be able to create a functioning NodePort service",
    # ConfigMaps, Secrets, Downward API, projected volumes
    "[sig-node] ConfigMap should be consumable via environment variable",
    "[sig-node] ConfigMap should be consumable via the environment",
    "[sig-storage] ConfigMap should be consumable from pods in volume",
    "[sig-node] Secrets should be consumable from pods in env vars",
    "[sig-storage] Secrets should be consumable from pods in volume with mappings",
    "[sig-storage] Projected secret should be consumable from pods in volume",
    "[sig-storage] Projected configMap should be consumable from pods in volume",
    "[sig-auth] [FeatureGate:ClusterTrustBundle] [FeatureGate:ClusterTrustBundleProjection] should be able to mount "
    "a single ClusterTrustBundle by name [MinimumKubeletVersion:1.37]",
    "[sig-node] Downward API should provide pod name, namespace and IP address as env vars",
    "[sig-node] Downward API should provide pod UID as env vars",
    "[sig-storage] Downward API volume should provide podname only",
    "[sig-storage] EmptyDir volumes should support (root,0644,default) [LinuxOnly]",
    # Workloads
    "[sig-apps] Deployment should run the lifecycle of a Deployment",
    "[sig-apps] ReplicaSet should serve a basic image on each replica with a public image",
    "[sig-apps] Job should manage the lifecycle of a job",
    "[sig-apps] Job should create pods for an Indexed job with completion indexes and specified hostname",
    "[sig-apps] StatefulSet Basic StatefulSet functionality [StatefulSetBasic] should list, patch and delete a "
    "collection of StatefulSets",
)

#: The suite's own time box for the subset; the test's limit adds the setup and a margin.
SUITE_TIMEOUT = "8m"


def focus(names: tuple[str, ...] = SUBSET) -> str:
    """A ginkgo focus regex selecting exactly `names` (each followed by its `[Conformance]` tag)."""
    return "(" + "|".join(re.escape(n) for n in names) + r") \[Conformance\]"


@pytest.fixture(scope="module")
def suite() -> build.ConformanceBinaries:
    return build.ensure_conformance_binaries(quiet=True)


@pytest.fixture(scope="module")
def conformance_tenant(
    real_bed: SuperCluster, suite: build.ConformanceBinaries, node_bins: build.NodeBinaries,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[nodebed.NodeEnv]:
    """The suite's images in the node, and an appliance with one tenant that runs CoreDNS."""
    archive, _, _ = e2eimages.ensure_archive(suite, real_bed.bins, node_bins)
    conformance.import_images(conformance.Bed(state=Path("/nonexistent"), started_here=False, info=real_bed.info),
                              archive)
    with nodebed.appliance(real_bed, tmp_path_factory.mktemp("app-conformance"), upstream="super-apiserver",
                           tenants=("conf",)) as env:
        yield env


async def test_a_tenant_passes_the_conformance_subset(
    conformance_tenant: nodebed.NodeEnv, suite: build.ConformanceBinaries, tmp_path: Path,
) -> None:
    """Every test of SUBSET runs and passes against the tenant (and none is skipped)."""
    env, t = conformance_tenant, conformance_tenant.tenant("conf")
    assert conformance.count_selected(suite.e2e_test, focus=focus(), skip="", serial=False) == len(SUBSET), \
        "a name in SUBSET no longer selects exactly one test of this e2e.test"

    await env.kubectl_in(t, "apply", "-f", str(SAMPLE_DNS))

    async def dns_ready() -> bool:
        svc = await nodebed.get_json(env, t, "service", "kube-dns", "-n", "kube-system")
        d = await nodebed.get_json(env, t, "deployment", "coredns", "-n", "kube-system")
        annotated = naming.ANNOTATION_TRANSPARENT_CLUSTER_IP in (svc["metadata"].get("annotations") or {})
        return annotated and bool((d.get("status") or {}).get("availableReplicas"))

    await wait_for(dns_ready, timeout=180, what="tenant CoreDNS available", interval=1)

    report = tmp_path / "report"
    kubectl = env.kubectl
    flags = conformance.e2e_flags(kubeconfig=t.kubeconfig, report_dir=report, kubectl=kubectl, num_nodes=1)
    argv = conformance.phase_argv(e2e_test=suite.e2e_test, ginkgo=suite.path("ginkgo"), name="subset",
                                  focus=focus(), skip="", serial=False, procs=2, timeout=SUITE_TIMEOUT, flags=flags)
    run_env = dict(os.environ, KUBECONFIG=str(t.kubeconfig), PATH=f"{kubectl.parent}:{os.environ.get('PATH', '')}")
    run = functools.partial(conformance.run_phase, conformance.Phase("subset", argv, report, 2), env=run_env,
                            timeout_s=conformance.parse_duration(SUITE_TIMEOUT) + 120)
    result, rc, _ = await trio.to_thread.run_sync(run)
    failed = "\n".join(f"  {f.name}: {f.first_line}" for f in result.failures)
    assert not result.note, result.note
    assert result.failed == 0, f"{result.failed} conformance test(s) failed (log: {report / 'e2e.log'}):\n{failed}"
    assert result.passed == len(SUBSET) and not result.skips, (
        f"passed {result.passed} of {len(SUBSET)}; skipped: {[s.name for s in result.skips]}")
    assert rc == 0, f"e2e exit code {rc} (log: {report / 'e2e.log'})"

