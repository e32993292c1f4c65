"""PodCertificate projections, with the syncer in the kubelet's place.

A `podCertificate` projection asks the kubelet for a fresh key and a certificate from a signer
of the Pod's cluster: it makes the key, creates a PodCertificateRequest naming the Pod, its
service account and its node, and writes key and chain once the signer has issued them. The
super kubelet would ask the *super* cluster, where the tenant's signer does not listen. So
`mutation` turns each such source into a Secret source (`vc-pcert-<hash of the Pod uid>`, keys
`<volume>.<source index>.{bundle,key,chain}`), which the super kubelet waits for, and once the
tenant Pod is bound (a request must name the node and its uid) `ensure` does the kubelet's part
against the tenant apiserver and writes the Secret. Until then the super Pod waits, as a Pod
waits for its kubelet's requests.

The private key lives in memory (`Tenant.pod_certificates`) between the request and the
issued chain; after a syncer restart a new request is made. Certificates are not renewed
before `beginRefreshAt` yet: a Pod keeps the certificate it started with.
`new_key`, `clean_chain` and `bundle_data` are pure; the names are `mutation`'s.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Mapping
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from appliance.kube import errors, resources
from appliance.syncer import mutation
from appliance.syncer.context import SyncContext
from appliance.syncer.mutation import PodCertificateSource as Source
from appliance.syncer.resources.base import Permanent, Retry
from appliance.syncer.tenant import Tenant
from appliance.util import naming

log = logging.getLogger(__name__)

DEFAULT_EXPIRATION = 86400  # what the signer gets when the Pod does not ask (the API's default)


def new_key(key_type: str) -> tuple[bytes, bytes]:
    """A private key of the projection's type, PEM (PKCS#8), and the stub PKCS#10 request the
    API wants as proof of possession (pure but for the randomness)."""
    private: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
    if key_type in ("RSA3072", "RSA4096"):
        private = rsa.generate_private_key(public_exponent=65537, key_size=int(key_type[3:]))
    elif key_type in ("ECDSAP256", "ECDSAP384", "ECDSAP521"):
        curve = {"ECDSAP256": ec.SECP256R1(), "ECDSAP384": ec.SECP384R1(), "ECDSAP521": ec.SECP521R1()}[key_type]
        private = ec.generate_private_key(curve)
    elif key_type == "ED25519":
        private = ed25519.Ed25519PrivateKey.generate()
    else:
        raise ValueError(f"unknown key type {key_type!r}")
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    algorithm = None if isinstance(private, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    csr = builder.sign(private, algorithm)
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return pem, csr.public_bytes(serialization.Encoding.DER)


def clean_chain(chain: str) -> bytes:
    """The issued chain as plain CERTIFICATE blocks, as the kubelet writes it (pure)."""
    out = []
    for block in x509.load_pem_x509_certificates(chain.encode()):
        out.append(block.public_bytes(serialization.Encoding.PEM))
    return b"".join(out)


def bundle_data(source: Source, key_pem: bytes, chain_pem: bytes) -> dict[str, str]:
    """Secret data for one projection: key+chain, key, chain, each base64 (pure)."""
    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    prefix = source.key_prefix
    return {f"{prefix}.bundle": b64(key_pem + chain_pem), f"{prefix}.key": b64(key_pem),
            f"{prefix}.chain": b64(chain_pem)}


def _request(vpod: Mapping[str, Any], source: Source, *, sa_uid: str, node: str, node_uid: str,
             csr: bytes) -> dict[str, Any]:
    meta, spec = vpod["metadata"], vpod.get("spec") or {}
    body: dict[str, Any] = {
        "apiVersion": "certificates.k8s.io/v1", "kind": "PodCertificateRequest",
        "metadata": {"generateName": "req-", "namespace": meta["namespace"],
                     "ownerReferences": [{"apiVersion": "v1", "kind": "Pod", "name": meta["name"],
                                          "uid": meta["uid"]}]},
        "spec": {
            "signerName": source.spec["signerName"],
            "podName": meta["name"], "podUID": meta["uid"],
            "serviceAccountName": spec.get("serviceAccountName") or "default", "serviceAccountUID": sa_uid,
            "nodeName": node, "nodeUID": node_uid,
            "stubPKCS10Request": base64.b64encode(csr).decode(),
        },
    }
    if source.spec.get("maxExpirationSeconds") is not None:
        body["spec"]["maxExpirationSeconds"] = source.spec["maxExpirationSeconds"]
    if source.spec.get("userAnnotations"):
        body["spec"]["unverifiedUserAnnotations"] = dict(source.spec["userAnnotations"])
    return body


def missing(sx: SyncContext, vpod: Mapping[str, Any], ppod: Mapping[str, Any]) -> bool:
    """Whether the super Pod still waits for its certificate Secret (no I/O)."""
    return bool(mutation.pod_certificate_sources(vpod)) and sx.super_cache("secret").get(
        mutation.pod_certificate_secret(vpod["metadata"]["uid"]), ppod["metadata"]["namespace"]) is None


def _refused(pcr: Mapping[str, Any]) -> str | None:
    for cond in (pcr.get("status") or {}).get("conditions") or ():
        if cond.get("type") in ("Denied", "Failed") and cond.get("status") == "True":
            return f"{cond['type']}: {cond.get('reason', '')} {cond.get('message', '')}".strip()
    return None


async def ensure(sx: SyncContext, tenant: Tenant, vpod: Mapping[str, Any], ppod: Mapping[str, Any], node_name: str) -> None:
    """Write the super Pod's certificate Secret once every projection's certificate is issued.

    Raises Retry while a signer has not answered, Permanent when it denied a request.
    """
    meta = vpod["metadata"]
    super_ns, name = ppod["metadata"]["namespace"], mutation.pod_certificate_secret(meta["uid"])
    if sx.super_cache("secret").get(name, super_ns) is not None:
        return
    node = tenant.get("node", node_name)
    if node is None:
        raise Retry(f"virtual node {node_name} of pod {meta['namespace']}/{meta['name']} is not in the cache yet")
    sa_name = (vpod.get("spec") or {}).get("serviceAccountName") or "default"
    data: dict[str, str] = {}
    pending = tenant.pod_certificates
    for source in mutation.pod_certificate_sources(vpod):
        slot = (meta["uid"], source.key_prefix)
        if slot not in pending:
            sa = await tenant.client.get(resources.SERVICEACCOUNTS, sa_name, namespace=meta["namespace"])
            key_pem, csr = new_key(str(source.spec.get("keyType", "")))
            created = await tenant.client.create(resources.PODCERTIFICATEREQUESTS, _request(
                vpod, source, sa_uid=sa["metadata"]["uid"], node=node_name, node_uid=node["metadata"]["uid"], csr=csr),
                namespace=meta["namespace"])
            pending[slot] = (created["metadata"]["name"], key_pem)
        pcr_name, key_pem = pending[slot]
        try:
            pcr = await tenant.client.get(resources.PODCERTIFICATEREQUESTS, pcr_name, namespace=meta["namespace"])
        except errors.NotFound:
            del pending[slot]  # deleted under us (its Pod went, or a user): ask again
            raise Retry(f"PodCertificateRequest {pcr_name} vanished") from None
        refused = _refused(pcr)
        if refused:
            del pending[slot]
            raise Permanent(f"signer {source.spec['signerName']} refused PodCertificateRequest {pcr_name}: {refused}")
        chain = (pcr.get("status") or {}).get("certificateChain")
        if not chain:
            raise Retry(f"waiting for signer {source.spec['signerName']} to issue PodCertificateRequest {pcr_name}")
        data.update(bundle_data(source, key_pem, clean_chain(chain)))
    body = {
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {"name": name, "namespace": super_ns,
                     "labels": {naming.LABEL_VC_NAME: tenant.id.vc_name, naming.LABEL_VC_NAMESPACE: tenant.id.vc_namespace},
                     "annotations": {naming.ANNOTATION_CLUSTER: tenant.key},
                     "ownerReferences": [{"apiVersion": "v1", "kind": "Pod", "name": ppod["metadata"]["name"],
                                          "uid": ppod["metadata"]["uid"]}]},
        "data": data,
    }
    try:
        await sx.super_client.create(resources.SECRETS, body, namespace=super_ns)
    except errors.AlreadyExists:
        pass
    for source in mutation.pod_certificate_sources(vpod):
        pending.pop((meta["uid"], source.key_prefix), None)
    log.info("tenant %s: pod %s/%s: %d pod certificate(s) issued", tenant.key, meta["namespace"], meta["name"],
             len(data) // 3)
