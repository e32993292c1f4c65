"""The manager's settings: the `[manager]` section of the config file, and what the manager runs with.

`ManagerConfig` is the file's section; its defaults are the manager's defaults (written once).
`ManagerSettings` extends it with what the file does not hold directly: the resolved data
directory, the binaries found or built, and the appliance's tenant selector. Both are frozen.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Literal

import msgspec

from appliance.controlplane.build import Binaries
from appliance.util.settings import ConfigBase, Positive, PositiveInt


class ManagerConfig(ConfigBase, frozen=True):
    """`[manager]`: how VirtualClusters are provisioned; see each field."""

    #: Reconcile VirtualClusters at all; False = another replica or tool provisions.
    enabled: bool = True
    #: process | native | import, for VirtualClusters that do not choose (see `model`); the
    #: file's `provisioner` key.
    default_provisioner: Literal["process", "native", "import"] = msgspec.field(
        default="process", name="provisioner")
    #: At most this many VirtualClusters are provisioned or torn down at the same time.
    num_reconciles: PositiveInt = 10
    #: Deadline of one provisioning attempt (and of one teardown), in seconds; also each
    #: component's readiness wait.
    provisioner_timeout: Positive = 600.0
    #: Leave tenant processes (and the shared etcd) running when the appliance exits, and
    #: adopt them again on start; False stops them with the appliance.
    keep_control_planes: bool = True
    #: Address tenant apiservers listen on and that their kubeconfigs name (an unspecified
    #: address such as 0.0.0.0 listens everywhere and is advertised as 127.0.0.1).
    tenant_bind_address: str = "127.0.0.1"
    #: Process-mode tenants share the manager's etcd (own key prefix each) unless their
    #: VirtualCluster says `tenancy.x-k8s.io/etcd: dedicated`; False makes dedicated the default.
    shared_etcd: bool = True
    #: Process-mode tenants without `spec.serviceCidr` get a Service range of this size from
    #: this pool, registered as their own ServiceCIDR in the super cluster so their ClusterIPs
    #: work there (`servicecidrs`); it must not overlap networks the super cluster routes.
    #: An empty pool keeps such tenants on 10.32.0.0/16 with super-allocated addresses.
    tenant_service_pool: str = "10.64.0.0/12"
    tenant_service_prefix: int = msgspec.field(default=20)
    #: Process-mode tenants' certificates are renewed when this fraction of their validity
    #: has passed (`certrotation`); the tenant's processes then restart one at a time.
    certificate_renew_fraction: float = 0.8
    #: Lifetime of renewed tenant certificates in seconds; 0 = the VirtualCluster's
    #: `pkiExpireDays` (default 365 days). Short values are for tests and strict sites.
    certificate_lifetime: float = 0.0

    def __post_init__(self) -> None:
        if not 0.1 <= self.certificate_renew_fraction <= 0.95:
            raise msgspec.ValidationError("manager.certificate-renew-fraction must be between 0.1 and 0.95")
        if self.certificate_lifetime and self.certificate_lifetime < 30:
            raise msgspec.ValidationError("manager.certificate-lifetime must be 0 or at least 30 seconds")
        if self.tenant_service_pool:
            try:
                pool = ipaddress.ip_network(self.tenant_service_pool)
            except ValueError as exc:
                raise msgspec.ValidationError(f"manager.tenant-service-pool: {exc}") from None
            if not pool.prefixlen <= self.tenant_service_prefix <= pool.max_prefixlen - 4:
                raise msgspec.ValidationError(
                    f"manager.tenant-service-prefix /{self.tenant_service_prefix} does not fit the pool {pool}")

    @property
    def provisioner(self) -> str:
        """The file's name for `default_provisioner`."""
        return self.default_provisioner


class ManagerSettings(ManagerConfig, kw_only=True, frozen=True):
    """What the manager runs with: its `[manager]` section plus the fields below."""

    #: Tenant state lives in `data_dir/tenants/<cluster key>/` (0700); the shared etcd in
    #: `data_dir/etcd/`.
    data_dir: Path
    #: Where kube-apiserver, kube-controller-manager and etcd are (process provisioner).
    bins: Binaries
    #: Only VirtualClusters matching this label selector (None: all). For sharding tenants
    #: between appliances that share a super cluster, and for tests on a shared test bed.
    label_selector: str | None = None
