"""Asking a Running tenant to renew its certificates now, and waiting until it has (`vc-appliance rotate-certs`).

The request is annotation `tenancy.x-k8s.io/rotate-certificates` with a value the manager has
not seen (the time, to the microsecond); the process provisioner renews, restarts the
tenant's processes one at a time and then names that value in condition `CertificatesValid`
(`manager.certrotation`). Other provisioners do not renew: the request is refused up front.
"""

from __future__ import annotations

import datetime as dt

import trio

from appliance.kube import errors, resources
from appliance.kube.client import ApiClient
from appliance.manager import model


class RenewalError(RuntimeError):
    """The tenant cannot renew, or failed to."""


async def request(super_client: ApiClient, *, namespace: str, name: str) -> str:
    """Annotate the VirtualCluster; return the token the manager will report back."""
    vc = model.decode_vc(await super_client.get(resources.VIRTUALCLUSTERS, name, namespace=namespace))
    if vc.status.phase != model.RUNNING:
        raise RenewalError(f"VirtualCluster {namespace}/{name} is {vc.status.phase or 'Pending'}, not Running")
    if vc.status.provisioner and vc.status.provisioner != "process":
        raise RenewalError(f"VirtualCluster {namespace}/{name} uses the {vc.status.provisioner} provisioner; "
                           "only process-mode tenants renew their certificates")
    token = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    patch = {"metadata": {"annotations": {model.ANNOTATION_ROTATE_CERTIFICATES: token}}}
    await super_client.patch(resources.VIRTUALCLUSTERS, name, patch, namespace=namespace)
    return token


def reported(vc: model.VirtualCluster, token: str) -> str | None:
    """The condition message once the renewal asked for with `token` is done, else None."""
    cond = vc.status.condition(model.COND_CERTIFICATES)
    if cond is not None and cond.status == "True" and f"request {token}" in cond.message:
        return cond.message
    return None


async def wait_renewed(super_client: ApiClient, *, namespace: str, name: str, token: str) -> str:
    """Poll until the renewal of `token` is reported; the caller's deadline bounds it."""
    while True:
        try:
            vc = model.decode_vc(await super_client.get(resources.VIRTUALCLUSTERS, name, namespace=namespace))
        except errors.NotFound:
            raise RenewalError(f"VirtualCluster {namespace}/{name} was deleted") from None
        done = reported(vc, token)
        if done is not None:
            return done
        rollout = vc.status.condition(model.COND_ROLLOUT)
        if rollout is not None and rollout.reason == model.REASON_ROLLED_BACK:
            raise RenewalError(f"VirtualCluster {namespace}/{name}: {rollout.message}")
        await trio.sleep(1.0)
