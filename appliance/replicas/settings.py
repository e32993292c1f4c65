"""The replicas' settings: the `[leases]` section of the config file, and what the coordinator runs with.

`LeasesConfig` is the file's section; its defaults are the coordinator's defaults (written
once), and it refuses timings that cannot work. `LeaseSettings` extends it with the
appliance's tenant selector; the app fills in `identity` and `placement` when the file
leaves them empty. Both are frozen.
"""

from __future__ import annotations

from appliance.util.settings import ConfigBase, Positive


class LeasesConfig(ConfigBase, frozen=True):
    """Several replicas share the tenants through coordination.k8s.io Leases (see README)."""

    enabled: bool = False
    #: namespace of the replica heartbeat and tenant Leases (created if missing).
    namespace: str = "vc-appliance-system"
    #: this replica's holder identity; empty = `<hostname>-<random>` (new on every start).
    identity: str = ""
    #: where this replica's process-mode control planes live (host and data dir); empty =
    #: `<hostname>:<data-dir>`.
    placement: str = ""
    #: seconds a Lease stays valid without renewal (Kubernetes leader election: 15 / 10 / 2).
    lease_duration: Positive = 15.0
    #: seconds a holder keeps serving while renewals fail; must be below `lease-duration`.
    renew_deadline: Positive = 10.0
    #: seconds between renewals and balancing steps; must be below `renew-deadline`.
    retry_period: Positive = 2.0

    def __post_init__(self) -> None:
        if not self.retry_period < self.renew_deadline < self.lease_duration:
            raise ValueError("leases: expected retry-period < renew-deadline < lease-duration")


class LeaseSettings(LeasesConfig, frozen=True):
    """What the coordinator runs with: its `[leases]` section plus the field below."""

    #: VirtualClusters this replica may serve (None = all)
    label_selector: str | None = None
