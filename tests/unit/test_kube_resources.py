"""Tests for appliance.kube.resources: URL paths of resource types."""

from __future__ import annotations

import pytest

from appliance.kube import resources
from appliance.kube.resources import Resource


@pytest.mark.parametrize(
    ("res", "kwargs", "expected"),
    [
        pytest.param(resources.PODS, {}, "/api/v1/pods", id="core-all-namespaces"),
        pytest.param(
            resources.PODS, {"namespace": "ns"}, "/api/v1/namespaces/ns/pods", id="core-collection"
        ),
        pytest.param(
            resources.PODS,
            {"namespace": "ns", "name": "p", "subresource": "status"},
            "/api/v1/namespaces/ns/pods/p/status",
            id="core-subresource",
        ),
        pytest.param(resources.NAMESPACES, {"name": "ns"}, "/api/v1/namespaces/ns", id="namespace"),
        pytest.param(resources.NODES, {"name": "n1"}, "/api/v1/nodes/n1", id="cluster-scoped"),
        pytest.param(
            resources.DEPLOYMENTS,
            {"namespace": "a", "name": "d", "subresource": "scale"},
            "/apis/apps/v1/namespaces/a/deployments/d/scale",
            id="group",
        ),
        pytest.param(
            resources.VIRTUALCLUSTERS,
            {"namespace": "t", "name": "vc"},
            "/apis/tenancy.x-k8s.io/v1alpha1/namespaces/t/virtualclusters/vc",
            id="virtualcluster",
        ),
        pytest.param(
            resources.CLUSTERVERSIONS,
            {"name": "cv"},
            "/apis/tenancy.x-k8s.io/v1alpha1/clusterversions/cv",
            id="clusterversion",
        ),
        pytest.param(
            resources.CLUSTERROLES,
            {"name": "system:basic-user"},
            "/apis/rbac.authorization.k8s.io/v1/clusterroles/system:basic-user",
            id="colon-kept",
        ),
        pytest.param(
            resources.CONFIGMAPS,
            {"namespace": "a", "name": "x/y"},
            "/api/v1/namespaces/a/configmaps/x%2Fy",
            id="slash-quoted",
        ),
    ],
)
def test_path(res: Resource, kwargs: dict[str, str], expected: str) -> None:
    """Paths use /api/v1 for the core group, /apis/<group>/<version> otherwise."""
    assert expected == res.path(**kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"name": "x", "namespace": "ns"}, id="namespace-on-cluster-scoped"),
        pytest.param({"subresource": "status"}, id="subresource-without-name"),
        pytest.param({"name": ".."}, id="dot-dot"),
        pytest.param({"name": ""}, id="empty-name"),
    ],
)
def test_path_refuses(kwargs: dict[str, str]) -> None:
    """Paths that would address something else than asked raise ValueError."""
    with pytest.raises(ValueError, match=r"invalid|cluster-scoped|needs a name"):
        resources.NODES.path(**kwargs)


def test_api_version() -> None:
    """apiVersion is the bare version for core and group/version otherwise."""
    assert "v1" == resources.PODS.api_version
    assert "tenancy.x-k8s.io/v1alpha1" == resources.VIRTUALCLUSTERS.api_version
    assert "coordination.k8s.io/v1" == resources.LEASES.api_version


def test_scopes() -> None:
    """The VirtualCluster kinds have the scopes the original CRDs declare."""
    assert resources.VIRTUALCLUSTERS.namespaced
    assert not resources.CLUSTERVERSIONS.namespaced
    assert not resources.TOKENREVIEWS.namespaced
