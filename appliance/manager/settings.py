"""The manager's settings: the `[manager]` section of the config file, and what the manager runs with.

`ManagerConfig` is the file's section; its defaults are the manager's defaults (written once).
`ManagerSettings` extends it with what the file does not hold directly: the resolved data
directory, the binaries found or built, and the appliance's tenant selector. Both are frozen.
"""

from __future__ import annotations

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
