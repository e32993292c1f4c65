"""Typed configuration of the appliance, decoded from TOML with msgspec.

One settings tree: each component owns its section as a Struct beside its code (see
`util/settings.py`), and `Config` composes them; only `[super]` and the top-level keys live
here. Every key has a default, so an empty file is a valid config for a local run. Unknown
keys and wrong types are errors that name the file and the key path
(`$.syncer.workers`). Environment variables `VCA_<SECTION>_<KEY>` (upper case,
dashes as underscores; values in TOML syntax, bare words taken as strings) override
the file, for containers. `configs/appliance.toml` documents every key and a test
decodes it.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

import msgspec

from appliance import health, logsetup
from appliance.manager import settings as manager_settings
from appliance.proxy import settings as proxy_settings
from appliance.replicas import settings as replicas_settings
from appliance.syncer import settings as syncer_settings
from appliance.util.settings import ConfigBase, Positive, PositiveInt


class ConfigError(ValueError):
    """The configuration cannot be used; the message names the file and key."""


class SuperSection(ConfigBase, frozen=True):
    """`[super]`: how the appliance reaches the super cluster (the kube client's settings)."""

    #: kubeconfig of the super cluster (`--kubeconfig` wins); empty = as kubectl: KUBECONFIG,
    #: else ~/.kube/config, else the in-cluster service account (`app.super_source`).
    kubeconfig: str = ""
    #: context inside that kubeconfig (`--context` wins); empty = its current-context.
    context: str = ""
    qps: Positive = 1000.0
    burst: PositiveInt = 2000
    #: per-request timeout, seconds (watches are long requests and use their own).
    request_timeout: Positive = 30.0


# The sections each component owns (the old names stay for callers that use them).
HttpSection = health.HttpSettings
LogSection = logsetup.LogSettings
ManagerSection = manager_settings.ManagerConfig
SyncerSection = syncer_settings.SyncerConfig
ProxySection = proxy_settings.ProxyConfig
LeasesSection = replicas_settings.LeasesConfig


class Config(ConfigBase, frozen=True):
    #: tenant data (PKI, etcd, logs) lives here; created 0700.
    data_dir: str = "/var/lib/vc-appliance"
    #: where the Kubernetes binaries are; empty = build/find them in the user cache.
    binaries_dir: str = ""
    #: seconds the writes in flight get after SIGTERM (no new work is taken) before everything
    #: is cancelled; a second signal cancels at once.
    graceful_timeout: Positive = 20.0
    #: label selector limiting which VirtualClusters this appliance serves ("" = all).
    tenant_selector: str = ""
    super: SuperSection = msgspec.field(default_factory=SuperSection)
    http: health.HttpSettings = msgspec.field(default_factory=health.HttpSettings)
    log: logsetup.LogSettings = msgspec.field(default_factory=logsetup.LogSettings)
    manager: manager_settings.ManagerConfig = msgspec.field(default_factory=manager_settings.ManagerConfig)
    syncer: syncer_settings.SyncerConfig = msgspec.field(default_factory=syncer_settings.SyncerConfig)
    proxy: proxy_settings.ProxyConfig = msgspec.field(default_factory=proxy_settings.ProxyConfig)
    leases: replicas_settings.LeasesConfig = msgspec.field(default_factory=replicas_settings.LeasesConfig)


ENV_PREFIX = "VCA_"


def _env_overrides(env: dict[str, str], doc: dict[str, object]) -> dict[str, object]:
    """Fold `VCA_SECTION_KEY=value` (or `VCA_KEY` for top-level keys) into the decoded doc."""
    sections = [
        f.encode_name for f in msgspec.structs.fields(Config)
        if f.default_factory is not msgspec.NODEFAULT
    ]
    for name, raw in sorted(env.items()):
        if not name.startswith(ENV_PREFIX):
            continue
        words = name[len(ENV_PREFIX):].lower().replace("_", "-")
        target, key = doc, words
        for section in sections:
            if words.startswith(section + "-"):
                target = doc.setdefault(section, {})  # type: ignore[assignment]
                key = words[len(section) + 1:]
                break
        try:
            value: object = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw
        target[key] = value
    return doc


def load(path: Path | None, *, env: dict[str, str] | None = None) -> Config:
    """Decode the config file (None = defaults only), then apply environment overrides.

    Raises ConfigError naming the file and the offending key.
    """
    where = str(path) if path else "<defaults>"
    try:
        doc = tomllib.loads(path.read_text()) if path else {}
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where}: not valid TOML: {exc}") from None
    doc = _env_overrides(dict(os.environ if env is None else env), doc)
    try:
        return msgspec.convert(doc, type=Config)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{where}: {exc}") from None
