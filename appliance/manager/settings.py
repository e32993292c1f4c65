"""The manager's settings: one frozen record, built by the app from the config file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from appliance.controlplane.build import Binaries


@dataclass(frozen=True, slots=True)
class ManagerSettings:
    """How the manager provisions tenants; see each field."""

    #: Tenant state lives in `data_dir/tenants/<cluster key>/` (0700); the shared etcd in
    #: `data_dir/etcd/`.
    data_dir: Path
    #: Where kube-apiserver, kube-controller-manager and etcd are (process provisioner).
    bins: Binaries
    #: process | native | import, for VirtualClusters that do not choose (see `model`).
    default_provisioner: str = "process"
    #: At most this many VirtualClusters are provisioned or torn down at the same time.
    num_reconciles: int = 10
    #: Deadline of one provisioning attempt (and of one teardown), in seconds.
    provisioner_timeout: float = 600.0
    #: Leave tenant processes (and the shared etcd) running when the appliance exits, and
    #: adopt them again on start; False stops them with the appliance.
    keep_control_planes: bool = True
    #: Address tenant apiservers listen on and that their kubeconfigs name (an unspecified
    #: address such as 0.0.0.0 listens everywhere and is advertised as 127.0.0.1).
    tenant_bind_address: str = "127.0.0.1"
    #: Process-mode tenants share the manager's etcd (own key prefix each) unless their
    #: VirtualCluster says `tenancy.x-k8s.io/etcd: dedicated`; False makes dedicated the default.
    shared_etcd: bool = True
    #: Only VirtualClusters matching this label selector (None: all). For sharding tenants
    #: between appliances that share a super cluster, and for tests on a shared test bed.
    label_selector: str | None = None
