"""One module per synced kind; `all_kinds()` lists the default set in sync order."""

from __future__ import annotations

from appliance.syncer.resources.base import Kind


def all_kinds() -> list[Kind]:
    from appliance.syncer.resources import namespaces, pods, services, simple

    return [
        namespaces.NamespaceKind(),
        simple.ConfigMapKind(),
        simple.SecretKind(),
        simple.ServiceAccountKind(),
        services.ServiceKind(),
        simple.EndpointsKind(),
        simple.PersistentVolumeClaimKind(),
        pods.PodKind(),
    ]
