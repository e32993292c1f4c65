"""The `import` provisioner: adopt an existing cluster given by kubeconfig.

The kubeconfig comes from the three places of `kubeconfigs.find`. It must hold inline
credentials only (`kubeconfigs.checked_credentials`), and the cluster must answer
`GET /version` with them before the VirtualCluster becomes Running. The root namespace is
created as for any VirtualCluster. When the kubeconfig came from a secret in the VC's own
namespace, a copy with the same name goes into the root namespace, where the syncer looks.
Deleting the VirtualCluster never touches the imported cluster.
"""

from __future__ import annotations

import base64

import trio

from appliance.kube import client as kube_client
from appliance.kube import errors, resources
from appliance.manager import kubeconfigs, rootns
from appliance.manager.provision.base import Context, ManagedTenant
from appliance.util import naming

CONNECT_TIMEOUT = 15.0


class ImportProvisioner:
    name = "import"

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx

    async def provision(self, t: ManagedTenant) -> str:
        client = self._ctx.super
        t.progress = "looking up the kubeconfig"
        found = await kubeconfigs.find(client, t.vc, root_namespace=t.key)
        if found is None:
            raise RuntimeError(
                f"no kubeconfig: set annotation {naming.ANNOTATION_ADMIN_KUBECONFIG} (base64), or "
                f"{naming.ANNOTATION_SECRET_ADMIN_KUBECONFIG} (a secret with data key "
                f"{naming.ANNOTATED_KUBECONFIG_SECRET_KEY!r})"
            )
        creds = kubeconfigs.checked_credentials(found)
        t.progress = f"connecting to {creds.server} ({found.where})"
        try:
            with trio.fail_after(CONNECT_TIMEOUT):
                async with kube_client.open_client(creds, timeout=CONNECT_TIMEOUT) as tenant:
                    version = await tenant.server_version()
        except trio.TooSlowError:
            raise RuntimeError(f"{creds.server} did not answer within {CONNECT_TIMEOUT:.0f} s") from None
        except errors.KubeError as exc:
            raise RuntimeError(f"cannot use {found.where} to reach {creds.server}: {exc}") from None
        t.progress = "creating the root namespace"
        await rootns.ensure_root_namespace(client, t.vc, t.key)
        if found.secret and found.namespace != t.key:
            await rootns.apply(client, resources.SECRETS, {
                "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                "metadata": {"name": found.secret, "namespace": t.key},
                "data": {naming.ANNOTATED_KUBECONFIG_SECRET_KEY: base64.b64encode(found.data).decode()},
            })
        return f"imported cluster {creds.server} ({version.get('gitVersion', 'unknown version')}) is running"

    async def ensure(self, t: ManagedTenant) -> None:
        """Nothing to adopt: the imported cluster runs on its own."""

    async def maintain(self, t: ManagedTenant) -> float | None:
        """Nothing: an imported cluster's certificates and processes are its owner's."""
        return None

    async def teardown(self, t: ManagedTenant) -> None:
        """Nothing outside the root namespace; the imported cluster is left alone."""
