"""Where a VirtualCluster's admin kubeconfig lives, in the original's order of precedence.

1. VC annotation `tenancy.x-k8s.io/admin-kubeconfig`: the kubeconfig, base64-encoded;
2. VC annotation `tenancy.x-k8s.io/secret.admin-kubeconfig`: the name of a secret with the
   kubeconfig under data key `value`, looked up in the root namespace and then in the VC's
   own namespace (CAPI style; the root namespace's name is not known before creation);
3. secret `admin-kubeconfig` (data key `admin-kubeconfig`) in the root namespace, which the
   process and native provisioners write. For their VCs it is the only source: the
   annotations count only for imported VCs and VCs of another manager.

`admin_kubeconfig` serves `vc-appliance kubeconfig NS/NAME`. `checked_credentials` is the
gate for imported kubeconfigs (`creds.parse_untrusted_kubeconfig`: inline data only).
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any

from appliance.kube import creds, errors, resources
from appliance.kube.client import ApiClient
from appliance.manager import model, pkisecrets, reconcile
from appliance.util import naming

__all__ = ["Found", "NotRunning", "admin_kubeconfig", "checked_credentials", "find"]

class NotRunning(LookupError):
    """The VirtualCluster does not exist, is not Running, or exposes no kubeconfig yet."""


@dataclass(frozen=True, slots=True)
class Found:
    """A kubeconfig and a human description of where it came from (never its content)."""

    data: bytes
    where: str
    namespace: str = ""  # of the secret it came from, "" for the annotation
    secret: str = ""


async def _get_secret(client: ApiClient, namespace: str, name: str) -> dict[str, Any] | None:
    try:
        return await client.get(resources.SECRETS, name, namespace=namespace)
    except errors.NotFound:
        return None


async def find(client: ApiClient, vc: model.VirtualCluster, *, root_namespace: str) -> Found | None:
    """The admin kubeconfig of `vc`, or None if no source has one yet.

    Raises reconcile.Rejected when a source is present but unusable (bad base64, a named
    secret without the `value` key).
    """
    annotations = vc.metadata.annotations if naming.kubeconfig_annotations_apply(vc.status.provisioner) else {}
    inline = annotations.get(naming.ANNOTATION_ADMIN_KUBECONFIG)
    if inline is not None:
        where = f"annotation {naming.ANNOTATION_ADMIN_KUBECONFIG}"
        try:
            return Found(base64.b64decode(inline, validate=True), where)
        except (binascii.Error, ValueError):
            raise reconcile.Rejected("InvalidKubeconfig", f"{where} is not valid base64") from None
    secret_name = annotations.get(naming.ANNOTATION_SECRET_ADMIN_KUBECONFIG)
    if secret_name:
        for namespace in dict.fromkeys((root_namespace, vc.metadata.namespace)):
            secret = await _get_secret(client, namespace, secret_name)
            if secret is None:
                continue
            where = f"secret {namespace}/{secret_name}"
            value = pkisecrets.secret_data(secret, naming.ANNOTATED_KUBECONFIG_SECRET_KEY)
            if value is None:
                raise reconcile.Rejected(
                    "InvalidKubeconfig",
                    f"{where} (named by annotation {naming.ANNOTATION_SECRET_ADMIN_KUBECONFIG}) has "
                    f"no base64 data key {naming.ANNOTATED_KUBECONFIG_SECRET_KEY!r}",
                )
            return Found(value, where, namespace, secret_name)
        return None
    if not root_namespace:
        return None
    secret = await _get_secret(client, root_namespace, naming.ADMIN_KUBECONFIG_SECRET)
    if secret is None:
        return None
    value = pkisecrets.secret_data(secret, naming.ADMIN_KUBECONFIG_SECRET_KEY)
    where = f"secret {root_namespace}/{naming.ADMIN_KUBECONFIG_SECRET}"
    return None if value is None else Found(value, where, root_namespace, naming.ADMIN_KUBECONFIG_SECRET)


def checked_credentials(found: Found) -> creds.Credentials:
    """Parse an imported kubeconfig; Rejected (InvalidKubeconfig) says what is wrong with it."""
    try:
        return creds.parse_untrusted_kubeconfig(found.data, where=found.where)
    except creds.KubeconfigError as exc:
        raise reconcile.Rejected("InvalidKubeconfig", str(exc)) from None


async def admin_kubeconfig(super_client: ApiClient, namespace: str, name: str) -> bytes:
    """The admin kubeconfig of VirtualCluster `namespace/name`.

    Raises NotRunning, saying why, when it does not exist, is not Running, or has no
    kubeconfig in any of the three places.
    """
    try:
        obj = await super_client.get(resources.VIRTUALCLUSTERS, name, namespace=namespace)
    except errors.NotFound:
        raise NotRunning(f"VirtualCluster {namespace}/{name} not found") from None
    vc = model.decode_vc(obj)
    if vc.status.phase != model.RUNNING:
        detail = f" ({vc.status.reason}: {vc.status.message})" if vc.status.reason else ""
        raise NotRunning(f"VirtualCluster {namespace}/{name} is {vc.status.phase or 'new'}, not Running{detail}")
    found = await find(super_client, vc, root_namespace=vc.status.cluster_namespace)
    if found is None:
        raise NotRunning(f"VirtualCluster {namespace}/{name} is Running but exposes no admin kubeconfig")
    return found.data
