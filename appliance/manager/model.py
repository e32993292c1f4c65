"""The VirtualCluster API as the manager sees it: typed views, status patches, names.

Owns the msgspec Structs for what the manager reads from a VirtualCluster (a view: unknown
fields are ignored, never written back) and for what it writes (`StatusPatch`, whose UNSET
fields are left out of the merge patch, so only owned status fields are ever touched), plus
the manager's own annotation keys, condition types and reasons. Pure: no I/O.
"""

from __future__ import annotations

from typing import Any, Final

import msgspec

# --- the manager's own switches on a VirtualCluster / ClusterVersion -------------------------
#: process | native | import. On the VC it wins; on its ClusterVersion it is the default for
#: every VC using that version; otherwise `ManagerSettings.default_provisioner` applies.
ANNOTATION_PROVISIONER: Final = "tenancy.x-k8s.io/provisioner"
#: process provisioner only: `dedicated` gives the tenant its own etcd, `shared` puts it in
#: the manager's etcd under its own prefix. Default from `ManagerSettings.shared_etcd`.
ANNOTATION_ETCD: Final = "tenancy.x-k8s.io/etcd"
#: process provisioner only: the id of a restore staged by `vc-appliance restore` in this
#: appliance's data dir (`manager.backups`); honoured before the tenant's first start, then removed.
ANNOTATION_RESTORE_FROM: Final = "tenancy.x-k8s.io/restore-from"
#: process provisioner only: renew the tenant's certificates now when this value is new to the
#: manager (`vc-appliance rotate-certs` writes the time); see `manager.certrotation`.
ANNOTATION_ROTATE_CERTIFICATES: Final = "tenancy.x-k8s.io/rotate-certificates"
PROVISIONERS: Final = ("process", "native", "import")
FIELD_MANAGER: Final = "vc-manager"
COMPONENT: Final = "vc-manager"

# --- phases, reasons, conditions --------------------------------------------------------------
PENDING: Final = "Pending"
RUNNING: Final = "Running"
UPDATING: Final = "Updating"
ERROR: Final = "Error"

COND_READY: Final = "Ready"
COND_HEALTHY: Final = "ControlPlaneHealthy"
COND_RESTORED: Final = "Restored"
COND_CERTIFICATES: Final = "CertificatesValid"
COND_ROLLOUT: Final = "ControlPlaneUpToDate"

REASON_CREATING: Final = "ClusterCreating"
REASON_RUNNING: Final = "TenantControlPlaneRunning"
REASON_ERROR: Final = "TenantControlPlaneError"
REASON_ATTEMPT_FAILED: Final = "TenantControlPlaneCreateFailed"
REASON_DELETING: Final = "TenantControlPlaneDeleting"
REASON_DELETE_FAILED: Final = "TenantControlPlaneDeleteFailed"
REASON_PROCESSES_RUNNING: Final = "ProcessesRunning"
REASON_PROCESS_RESTARTED: Final = "ProcessRestarted"
REASON_RESTORED: Final = "RestoredFromBackup"
REASON_CERTIFICATES_RENEWED: Final = "CertificatesRenewed"
REASON_CERTIFICATES_ISSUED: Final = "CertificatesIssued"
REASON_ROLLING: Final = "RollingOut"
REASON_ROLLED_OUT: Final = "RolledOut"
REASON_ROLLED_BACK: Final = "RolledBack"
REASON_UP_TO_DATE: Final = "UpToDate"
REASON_MAINTENANCE_FAILED: Final = "MaintenanceFailed"

#: Provisioning attempts of a new VirtualCluster before it gives up (the original's "retry: 3").
RETRIES: Final = 3
DEFAULT_SERVICE_CIDR: Final = "10.32.0.0/16"
DEFAULT_CLUSTER_DOMAIN: Final = "cluster.local"


class KubeBase(msgspec.Struct, kw_only=True, omit_defaults=True, rename="camel"):
    """Base of the API views: camelCase on the wire, defaults omitted when encoding."""


class Condition(KubeBase):
    type: str
    status: str
    reason: str = ""
    message: str = ""
    last_transition_time: str = ""


class ObjectMeta(KubeBase):
    name: str = ""
    namespace: str = ""
    uid: str = ""
    generation: int = 0
    resource_version: str = ""
    deletion_timestamp: str | None = None
    finalizers: list[str] = msgspec.field(default_factory=list)
    labels: dict[str, str] = msgspec.field(default_factory=dict)
    annotations: dict[str, str] = msgspec.field(default_factory=dict)


class VirtualClusterSpec(KubeBase):
    cluster_domain: str = ""
    cluster_version_name: str = ""
    pki_expire_days: int | None = None
    transparent_meta_prefixes: list[str] = msgspec.field(default_factory=list)
    opaque_meta_prefixes: list[str] = msgspec.field(default_factory=list)
    service_cidr: str = ""


class VirtualClusterStatus(KubeBase):
    phase: str = ""
    cluster_namespace: str = ""
    message: str = ""
    reason: str = ""
    provisioner: str = ""
    retries_left: int | None = None
    observed_generation: int | None = None
    conditions: list[Condition] = msgspec.field(default_factory=list)

    def condition(self, type_: str) -> Condition | None:
        return next((c for c in self.conditions if c.type == type_), None)


class VirtualCluster(KubeBase):
    metadata: ObjectMeta = msgspec.field(default_factory=ObjectMeta)
    spec: VirtualClusterSpec = msgspec.field(default_factory=VirtualClusterSpec)
    status: VirtualClusterStatus = msgspec.field(default_factory=VirtualClusterStatus)

    @property
    def ref(self) -> str:
        return f"{self.metadata.namespace}/{self.metadata.name}"


class StatusPatch(KubeBase):
    """The owned status fields to change; UNSET ones are not part of the merge patch."""

    phase: str | msgspec.UnsetType = msgspec.UNSET
    cluster_namespace: str | msgspec.UnsetType = msgspec.UNSET
    message: str | msgspec.UnsetType = msgspec.UNSET
    reason: str | msgspec.UnsetType = msgspec.UNSET
    provisioner: str | msgspec.UnsetType = msgspec.UNSET
    retries_left: int | msgspec.UnsetType = msgspec.UNSET
    observed_generation: int | msgspec.UnsetType = msgspec.UNSET
    conditions: list[Condition] | msgspec.UnsetType = msgspec.UNSET

    def body(self) -> dict[str, Any]:
        """The merge-patch body for the `status` subresource."""
        return {"status": msgspec.to_builtins(self)}

    def is_empty(self) -> bool:
        return not msgspec.to_builtins(self)


def decode_vc(obj: dict[str, Any]) -> VirtualCluster:
    """A typed view of a VirtualCluster object (as a dict from the API or a cache)."""
    return msgspec.convert(obj, VirtualCluster, strict=False)


def finalizer(provisioner: str) -> str:
    """The finalizer a provisioner puts on its VirtualClusters (`virtualcluster.finalizer.X`)."""
    return f"virtualcluster.finalizer.{provisioner}"
