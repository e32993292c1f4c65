"""The shipped `vc-appliance` ClusterRole denies what the appliance never needs.

The role (configs/rbac.yaml) is applied to the real super cluster and bound to a fresh
ServiceAccount (`appliance_identity`); its TokenRequest token is asked, through real kubectl,
what it may do. The e2e test in test_secrets_hygiene.py runs the whole appliance under the same
identity, which shows the role is enough; this test shows where it stops. What it does allow
(Secrets and pod exec in every namespace) is stated here too, because SECURITY.md relies on it.
"""

from __future__ import annotations

import pytest

from tests.security.conftest import RoleIdentity
from tests.tally import Tally
from tests.testbed import SuperCluster, run_kubectl

pytestmark = [pytest.mark.security, pytest.mark.integration]

#: (verb, resource, namespace or "" for cluster scope): never granted to the appliance.
DENIED = [
    ("delete", "nodes", ""),
    ("patch", "nodes", ""),
    ("get", "nodes/proxy", ""),  # the kubelet API of every node, every tenant's pods
    ("create", "clusterroles", ""),
    ("create", "clusterrolebindings", ""),
    ("create", "rolebindings", "kube-system"),
    ("escalate", "clusterroles", ""),
    ("bind", "clusterroles", ""),
    ("impersonate", "users", ""),
    ("impersonate", "serviceaccounts", "kube-system"),
    ("create", "serviceaccounts/token", "kube-system"),  # minting super tokens
    ("create", "persistentvolumes", ""),
    ("delete", "persistentvolumes", ""),
    ("delete", "customresourcedefinitions", ""),
    ("create", "certificatesigningrequests", ""),
    ("update", "certificatesigningrequests/approval", ""),
    ("create", "mutatingwebhookconfigurations", ""),
    ("create", "validatingwebhookconfigurations", ""),
    ("create", "daemonsets", "kube-system"),
    ("create", "deployments", "kube-system"),
    ("update", "namespaces/finalize", ""),
    ("patch", "storageclasses", ""),
    ("delete", "priorityclasses", ""),
    ("delete", "events", "default"),
]

#: granted on purpose, cluster-wide (tenant super namespaces are created at run time)
ALLOWED = [
    ("create", "pods", "any-namespace"),
    ("get", "secrets", "kube-system"),
    ("create", "pods/exec", "kube-system"),
    # a tenant's `kubectl debug` containers and in-place resizes reach its super Pods; no more
    # than creating Pods and exec in them, which the role grants anyway
    ("patch", "pods/ephemeralcontainers", "any-namespace"),
    ("patch", "pods/resize", "any-namespace"),
    ("watch", "virtualclusters.tenancy.x-k8s.io", ""),
    ("update", "leases.coordination.k8s.io", "any-namespace"),
]


async def can_i(sc: SuperCluster, who: RoleIdentity, verb: str, resource: str, ns: str) -> str:
    scope = ["-n", ns] if ns else []
    resource, _, sub = resource.partition("/")  # kubectl reads `res/x` as the object named x
    scope += [f"--subresource={sub}"] if sub else []
    out = await run_kubectl(sc.kubectl, who.kubeconfig, "auth", "can-i", verb, resource, *scope, check=False)
    return out.stdout.strip()


async def test_role_denies_what_the_appliance_does_not_need(
    super_cluster: SuperCluster, appliance_identity: RoleIdentity, tally: Tally
) -> None:
    """Node, RBAC, impersonation, token, webhook and workload writes are denied; the cluster-wide
    grants the design needs are there; a real request outside the role is Forbidden."""
    sc, who = super_cluster, appliance_identity
    whoami = await run_kubectl(sc.kubectl, who.kubeconfig, "auth", "whoami", "-o", "jsonpath={.status.userInfo.username}")
    assert who.user == whoami.stdout
    granted = [d for d in DENIED if await can_i(sc, who, *d) != "no"]
    tally.add("rbac: permissions outside the role (tried / denied)", tried=len(DENIED), held=len(DENIED) - len(granted))
    assert [] == granted, granted
    missing = [a for a in ALLOWED if await can_i(sc, who, *a) != "yes"]
    assert [] == missing
    node = sc.nodes[0]
    out = await run_kubectl(sc.kubectl, who.kubeconfig, "delete", "node", node, "--dry-run=server", check=False)
    assert out.returncode != 0 and "forbidden" in out.stderr.lower(), out
    out = await run_kubectl(sc.kubectl, who.kubeconfig, "get", "--raw", f"/api/v1/nodes/{node}/proxy/pods",
                            check=False)
    assert out.returncode != 0 and "forbidden" in out.stderr.lower(), out
    tally.add("rbac: requests outside the role (tried / Forbidden)", tried=2, held=2)
