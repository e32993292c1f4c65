"""What a tenant Pod sees from inside: its service-account tokens reach its own tenant.

The Pods run `kubectl` (the test bed's, from the locally built Kubernetes image) with the
credentials Kubernetes mounts, exactly as an in-cluster client would.
"""

from __future__ import annotations

import base64
import json
import uuid

from tests.realnode import nodebed

EMPTY_KUBECONFIG = "printf 'apiVersion: v1\\nkind: Config\\n' > /tmp/none"


async def test_the_mounted_token_works_against_the_tenant_and_not_the_super_cluster(
    appliance_super: nodebed.NodeEnv,
) -> None:
    """In-cluster kubectl (`kubernetes.default`, the mounted token and CA) lists the tenant's
    Pods as the Pod's service account; the same token is refused by the super apiserver."""
    env = appliance_super
    red, blue = env.tenant("red"), env.tenant("blue")
    name = f"incluster-{uuid.uuid4().hex[:6]}"
    await env.kubectl_in(red, "create", "rolebinding", f"{name}-view", "--clusterrole=view",
                         "--serviceaccount=default:default", "-n", "default")
    super_url = env.bed.url
    script = f"""
echo "env=$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT"
echo "whoami=$(kubectl auth whoami -o jsonpath='{{.status.userInfo.username}}')"
echo "pods=$(kubectl get pods -o name | tr '\\n' ' ')"
{EMPTY_KUBECONFIG}
SA=/var/run/secrets/kubernetes.io/serviceaccount
TOKEN=$(cat $SA/token)
echo "named=$(kubectl --kubeconfig=/tmp/none --server=https://kubernetes.default \
  --certificate-authority=$SA/ca.crt --token="$TOKEN" get pods -o name | tr '\\n' ' ')"
echo "super=$(kubectl --kubeconfig=/tmp/none --server={super_url} --insecure-skip-tls-verify=true \
  --token="$TOKEN" get pods 2>&1 | tail -1)"
"""
    await nodebed.apply(env, red, nodebed.pod(name, image=nodebed.KUBERNETES, command=["sh", "-c", script],
                                              restartPolicy="Never"))
    # A Pod of the other tenant, which the token must not see.
    other = f"other-{uuid.uuid4().hex[:6]}"
    await nodebed.apply(env, blue, nodebed.pod(other, command=["sleep", "3600"]))
    out = await nodebed.wait_succeeded(env, red, name)
    lines = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    assert lines["whoami"] == "system:serviceaccount:default:default", out
    assert f"pod/{name}" in lines["pods"].split(), out
    assert f"pod/{other}" not in lines["pods"].split(), out
    assert f"pod/{name}" in lines["named"].split(), out
    assert "You must be logged in to the server" in lines["super"], out  # a 401 from the super apiserver


def _claims(token: str) -> dict:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))  # type: ignore[no-any-return]


async def test_a_projected_token_has_its_audience_and_expiry_and_the_tenant_accepts_it(
    appliance_super: nodebed.NodeEnv,
) -> None:
    """A `serviceAccountToken` projection with its own audience and expiry mounts a token of the
    tenant apiserver with exactly those, bound to the Pod; the tenant's TokenReview accepts it
    for that audience."""
    env, t = appliance_super, appliance_super.tenant("red")
    name = f"projected-{uuid.uuid4().hex[:6]}"
    body = nodebed.pod(name, command=["sleep", "3600"], container={
        "volumeMounts": [{"name": "vault", "mountPath": "/var/run/vault", "readOnly": True}]},
        volumes=[{"name": "vault", "projected": {"sources": [
            {"serviceAccountToken": {"audience": "vault.example", "expirationSeconds": 1200, "path": "token"}},
            {"downwardAPI": {"items": [{"path": "name", "fieldRef": {"fieldPath": "metadata.name"}}]}},
        ]}}])
    await nodebed.apply(env, t, body)
    await nodebed.wait_running(env, t, name)
    token = (await nodebed.exec_in(env, t, name, "cat", "/var/run/vault/token")).stdout.strip()
    assert (await nodebed.exec_in(env, t, name, "cat", "/var/run/vault/name")).stdout.strip() == name
    claims = _claims(token)
    assert claims["aud"] == ["vault.example"]
    assert claims["exp"] - claims["iat"] == 1200
    assert claims["kubernetes.io"]["pod"]["name"] == name
    review = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
              "spec": {"token": token, "audiences": ["vault.example"]}}
    out = await env.kubectl_in(t, "create", "-o", "json", "-f", "-", stdin=json.dumps(review).encode())
    status = json.loads(out.stdout)["status"]
    assert status.get("authenticated") is True, status
    assert status["user"]["username"] == "system:serviceaccount:default:default"
