"""Resource types and their REST paths; pure, no I/O and no discovery.

A `Resource` names one group/version/plural and knows whether it is namespaced, which is
all the client needs to build a URL. The constants cover what the appliance touches; any
other type is one `Resource(...)` away. Discovery is deliberately absent: the appliance
knows the exact versions it speaks.
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass

__all__ = ["Resource"]


def _segment(value: str, what: str) -> str:
    """Quote one path segment; refuse empty or dot segments that would change the path."""
    if not value or value in {".", ".."}:
        raise ValueError(f"invalid {what}: {value!r}")
    return urllib.parse.quote(value, safe=":@")


@dataclass(frozen=True, slots=True)
class Resource:
    """One API resource type, e.g. `Resource("apps", "v1", "deployments", "Deployment", True)`."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool

    @property
    def api_version(self) -> str:
        """The `apiVersion` field value: `v1` for the core group, `<group>/<version>` else."""
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(
        self,
        *,
        namespace: str | None = None,
        name: str | None = None,
        subresource: str | None = None,
    ) -> str:
        """The URL path of the collection, an object, or an object's subresource.

        A namespaced resource without `namespace` gives the all-namespaces collection (list
        and watch only). Raises ValueError for a namespace on a cluster-scoped resource or a
        subresource without a name.
        """
        root = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        parts = [root]
        if namespace is not None:
            if not self.namespaced:
                raise ValueError(f"{self.plural} is cluster-scoped; namespace {namespace!r} given")
            parts.append("namespaces/" + _segment(namespace, "namespace"))
        parts.append(self.plural)
        if name is not None:
            parts.append(_segment(name, "name"))
        if subresource is not None:
            if name is None:
                raise ValueError(f"subresource {subresource!r} of {self.plural} needs a name")
            parts.append(_segment(subresource, "subresource"))
        return "/".join(parts)

    def __str__(self) -> str:
        return f"{self.plural}.{self.group}" if self.group else self.plural


# Core group.
NAMESPACES = Resource("", "v1", "namespaces", "Namespace", namespaced=False)
PODS = Resource("", "v1", "pods", "Pod", namespaced=True)
SERVICES = Resource("", "v1", "services", "Service", namespaced=True)
ENDPOINTS = Resource("", "v1", "endpoints", "Endpoints", namespaced=True)
CONFIGMAPS = Resource("", "v1", "configmaps", "ConfigMap", namespaced=True)
SECRETS = Resource("", "v1", "secrets", "Secret", namespaced=True)
SERVICEACCOUNTS = Resource("", "v1", "serviceaccounts", "ServiceAccount", namespaced=True)
PVCS = Resource("", "v1", "persistentvolumeclaims", "PersistentVolumeClaim", namespaced=True)
PVS = Resource("", "v1", "persistentvolumes", "PersistentVolume", namespaced=False)
NODES = Resource("", "v1", "nodes", "Node", namespaced=False)
EVENTS = Resource("", "v1", "events", "Event", namespaced=True)

# Named groups.
STORAGECLASSES = Resource(
    "storage.k8s.io", "v1", "storageclasses", "StorageClass", namespaced=False
)
PRIORITYCLASSES = Resource(
    "scheduling.k8s.io", "v1", "priorityclasses", "PriorityClass", namespaced=False
)
INGRESSES = Resource("networking.k8s.io", "v1", "ingresses", "Ingress", namespaced=True)
ENDPOINTSLICES = Resource("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice", namespaced=True)
CLUSTERTRUSTBUNDLES = Resource("certificates.k8s.io", "v1", "clustertrustbundles", "ClusterTrustBundle",
                               namespaced=False)
PODCERTIFICATEREQUESTS = Resource("certificates.k8s.io", "v1", "podcertificaterequests", "PodCertificateRequest",
                                  namespaced=True)
RUNTIMECLASSES = Resource("node.k8s.io", "v1", "runtimeclasses", "RuntimeClass", namespaced=False)
SERVICECIDRS = Resource("networking.k8s.io", "v1", "servicecidrs", "ServiceCIDR", namespaced=False)
LEASES = Resource("coordination.k8s.io", "v1", "leases", "Lease", namespaced=True)
CRDS = Resource(
    "apiextensions.k8s.io",
    "v1",
    "customresourcedefinitions",
    "CustomResourceDefinition",
    namespaced=False,
)
DEPLOYMENTS = Resource("apps", "v1", "deployments", "Deployment", namespaced=True)
REPLICASETS = Resource("apps", "v1", "replicasets", "ReplicaSet", namespaced=True)
STATEFULSETS = Resource("apps", "v1", "statefulsets", "StatefulSet", namespaced=True)
TOKENREVIEWS = Resource(
    "authentication.k8s.io", "v1", "tokenreviews", "TokenReview", namespaced=False
)
CLUSTERROLES = Resource(
    "rbac.authorization.k8s.io", "v1", "clusterroles", "ClusterRole", namespaced=False
)
CLUSTERROLEBINDINGS = Resource(
    "rbac.authorization.k8s.io", "v1", "clusterrolebindings", "ClusterRoleBinding", namespaced=False
)

# The VirtualCluster API (ours, compatible with the original).
VIRTUALCLUSTERS = Resource(
    "tenancy.x-k8s.io", "v1alpha1", "virtualclusters", "VirtualCluster", namespaced=True
)
CLUSTERVERSIONS = Resource(
    "tenancy.x-k8s.io", "v1alpha1", "clusterversions", "ClusterVersion", namespaced=False
)
