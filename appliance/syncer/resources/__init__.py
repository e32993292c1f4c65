"""One module per synced kind; `all_kinds()` lists the default set in sync order.

`extra` enables the opt-in kinds by their original plugin IDs (`priorityclass`, `ingress`).
"""

from __future__ import annotations

from appliance.syncer.resources.base import Kind

#: opt-in kinds, by the original's `--extra-syncing-resources` IDs
EXTRA_KINDS = ("priorityclass", "ingress")


def all_kinds(extra: tuple[str, ...] = ()) -> list[Kind]:
    from appliance.syncer.resources import ingress, namespaces, pods, services, simple, storage, volumes

    kinds: list[Kind] = [
        namespaces.NamespaceKind(),
        simple.ConfigMapKind(),
        simple.SecretKind(),
        simple.ServiceAccountKind(),
        services.ServiceKind(),
        simple.EndpointsKind(),
        simple.EndpointSliceKind(),
        simple.PersistentVolumeClaimKind(),
        pods.PodKind(),
        storage.StorageClassKind(),
        volumes.PersistentVolumeKind(),
    ]
    if "priorityclass" in extra:
        kinds.append(storage.PriorityClassKind())
    if "ingress" in extra:
        kinds.append(ingress.IngressKind())
    return kinds
