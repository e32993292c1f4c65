"""The syncer's settings: the `[syncer]` section of the config file, and what the syncer runs with.

`SyncerConfig` is the file's section; its defaults are the syncer's defaults (written once).
`SyncerSettings` extends it with what the file does not hold: where virtual nodes point (the
proxy's address, derived by the app) and fixed bounds that tests tune. Both are frozen.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from appliance.util import naming
from appliance.util.settings import ConfigBase, Positive, PositiveInt


class SyncerConfig(ConfigBase, frozen=True):
    """`[syncer]`: workers, periods and what the downward sync strips or adds."""

    enabled: bool = True
    #: downward workers per resource kind (pods get `pod-workers`).
    workers: PositiveInt = 3
    pod_workers: PositiveInt = 10
    upward_workers: PositiveInt = 10
    #: worker pools grow past their configured size while work waits and every worker is busy
    #: (each one mostly waits for an apiserver), up to this many times that size; a grown
    #: worker leaves after `pool_idle_exit` s without work. Upward (and Event) writes wait on
    #: tenant apiservers, so more of them in flight cut the upward queue wait. Downward, the
    #: ceiling is workers ÷ super create latency: once a request cost the syncer 0.35 ms of
    #: CPU instead of 1.4 ms, growing the Pod pool to 20 under a burst raised pods Running/s
    #: from 41 to 50 (direct: 55) on the 2-core bed; growing it to 30 gained little more and
    #: tripled the upward wait, the CPU going to creates (bench/RESULTS.md, issue 15). But one
    #: tenant's flood then has all 20 creates in flight, and the super apiserver, busier, is
    #: slower for every other tenant (quiet tenant p99 0.71 s fixed, 1.28 s grown ×2): downward
    #: pools stay fixed by default, as fairness is the design target. 1 keeps a pool at its size.
    upward_growth: PositiveInt = 4
    downward_growth: PositiveInt = 1
    #: seconds between patrol scans that repair drift.
    patrol_period: Positive = 60.0
    #: seconds a virtual node without pods lives on before it is deleted.
    vnode_gc_grace: Positive = 120.0
    #: tenant apiserver health probe period, seconds.
    health_period: Positive = 60.0
    #: label/annotation key domains never copied to the super cluster.
    opaque_meta_domains: tuple[str, ...] = naming.DEFAULT_OPAQUE_DOMAINS
    disable_service_account_token: bool = True
    disable_service_links: bool = False
    #: options written into the dnsConfig of tenant Pods (the file's `[syncer.dns-options]`
    #: table; read it as `dns_options`).
    dns_option_table: dict[str, str] = msgspec.field(default_factory=lambda: {"ndots": "5"}, name="dns-options")
    #: super node label keys copied to virtual nodes, beyond os/arch/hostname.
    extra_node_labels: tuple[str, ...] = ()
    #: opt-in resource kinds by the original's plugin IDs: "ingress", "priorityclass".
    extra_resources: tuple[Literal["ingress", "priorityclass"], ...] = ()
    #: container runtime handlers a tenant RuntimeClass may name (copied to the super cluster
    #: for the tenant's Pods); empty: any handler the nodes have.
    runtime_handlers: tuple[str, ...] = ()

    @property
    def dns_options(self) -> tuple[tuple[str, str | None], ...]:
        """The dnsConfig options as (name, value) pairs, in the file's order."""
        return tuple(self.dns_option_table.items())


class SyncerSettings(SyncerConfig, frozen=True):
    """What the syncer runs with: its `[syncer]` section plus the fields below."""

    #: what virtual nodes advertise as their kubelet endpoint: the proxy
    vnode_address: str = "127.0.0.1"
    vnode_port: int = 10550
    #: deadline of one tenant health probe, seconds
    health_timeout: float = 30.0
    #: lifetime of the tenant service-account tokens handed to super Pods
    token_expiration_seconds: int = 3600
    #: deadline of one reconcile, seconds
    reconcile_timeout: float = 60.0
    #: seconds a super event's upward work waits for more events of the same object (a super
    #: Pod is scheduled and then started within milliseconds): one tenant write for both
    upward_coalesce: float = 0.05
    #: workers copying super Events to tenants (their own queue, apart from upward_workers)
    event_workers: int = 10
    pool_idle_exit: float = 10.0
