"""Pure Pod mutation for downward sync: a converted super Pod → the Pod to create (SPEC §3.7).

Input is the output of `conversion.build_super_object` for a tenant Pod plus a frozen
`PodContext` holding everything the syncer resolved from its caches (super services, the
kube-dns IP, synced token secrets). No I/O and no clock: the same inputs always give the same
Pod, and environment variables are injected in a deterministic order (sorted by service name).
Order of work: the optional mutators (token volume, automount, root CA, service links), then
the default mutator steps 1-9 of SPEC §3.7. Missing prerequisites raise `MutationError`
subclasses, which the caller treats as "retry later".
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from appliance.kube import wire
from appliance.syncer import nodeselection
from appliance.util import naming, tenancy

REASON_NOT_SUPPORTED: Final = "NotSupported"
#: Secret keys of projected tokens outside the automatic volume: `projected.<volume>.<source index>`.
PROJECTED_TOKEN_KEY_PREFIX: Final = "projected."
DEFAULT_TOKEN_EXPIRATION: Final = 3600  # the API default of a serviceAccountToken projection
TOKEN_VOLUME_PREFIX: Final = "kube-api-access-"
# Built-in PriorityClasses (`system-node-critical`, `system-cluster-critical`); users cannot
# create classes with this prefix, so it names exactly the classes every apiserver carries.
SYSTEM_PRIORITY_PREFIX: Final = "system-"
CONTROL_PLANE_HOSTNAMES: Final = ("kubernetes", "kubernetes.default", "kubernetes.default.svc")
ROOT_CA_CONFIGMAP: Final = "kube-root-ca.crt"
MAX_NAMESERVERS: Final = 3  # Kubernetes validation limit for dnsConfig.nameservers
#: ConfigMaps in a super namespace that stand in for a tenant's ClusterTrustBundle projections.
TRUST_BUNDLE_CONFIGMAP_PREFIX: Final = "vc-ctb-"
TRUST_BUNDLE_KEY: Final = "bundle.pem"  # present only when a ClusterTrustBundle matched
TRUST_BUNDLE_OR_EMPTY_KEY: Final = "or-empty.pem"  # always present: the bundle, or ""
#: Secrets in a super namespace with the certificates issued for a Pod's podCertificate projections.
POD_CERTIFICATE_SECRET_PREFIX: Final = "vc-pcert-"


class MutationError(Exception):
    """A prerequisite of the super Pod is not synced yet; retry later."""


class ServiceNotReady(MutationError):
    """No super service is synced for the tenant yet (pods must see the control plane)."""

    def __init__(self) -> None:
        super().__init__("service is not ready")


class TokenNotReady(MutationError):
    """A serviceAccountToken projection has no tenant token yet; the super kubelet must never
    fill one (it would put a token of the super cluster into a tenant's Pod)."""

    def __init__(self, volume: str) -> None:
        super().__init__(f"no tenant token for the serviceAccountToken projection in volume {volume!r} yet")


class SecretNotReady(MutationError):
    """The super copy of a service-account token secret used by the Pod is not synced yet."""

    def __init__(self, secret_name: str) -> None:
        super().__init__(f"super secret for service-account token secret {secret_name!r} is not ready")
        self.secret_name = secret_name


@dataclass(frozen=True, slots=True)
class ServicePort:
    """One port of a super Service."""

    port: int
    name: str = ""
    protocol: str = "TCP"


@dataclass(frozen=True, slots=True)
class ServiceInfo:
    """The parts of a super Service that Pod env injection needs."""

    name: str
    namespace: str
    cluster_ip: str
    ports: tuple[ServicePort, ...] = ()

    @classmethod
    def from_service(cls, svc: Mapping[str, Any]) -> ServiceInfo:
        """Read a Service object (dict) into a ServiceInfo."""
        meta, spec = svc.get("metadata") or {}, svc.get("spec") or {}
        ports = tuple(
            ServicePort(port=p["port"], name=p.get("name") or "", protocol=p.get("protocol") or "TCP")
            for p in spec.get("ports") or ()
        )
        return cls(meta.get("name", ""), meta.get("namespace", ""), spec.get("clusterIP") or "", ports)


@dataclass(frozen=True, slots=True)
class TokenProjection:
    """A `serviceAccountToken` projection outside the automatic volume, as a key of the token Secret."""

    key: str
    audience: str | None
    expiration_seconds: int


def projected_token_key(volume: str, source_index: int) -> str:
    """The token Secret's key for source `source_index` of projected volume `volume`."""
    return f"{PROJECTED_TOKEN_KEY_PREFIX}{volume}.{source_index}"


def token_projections(tenant_pod: Mapping[str, Any]) -> list[TokenProjection]:
    """Every serviceAccountToken projection the Pod asks for besides the automatic one.

    Each gets its own tenant token (TokenRequest with the projection's audience and expiry),
    stored under its key in the Pod's token Secret; `mutate_pod` mounts it in its place.
    """
    found = []
    for volume in (tenant_pod.get("spec") or {}).get("volumes") or ():
        name = str(volume.get("name", ""))
        if name.startswith(TOKEN_VOLUME_PREFIX):
            continue
        for index, source in enumerate((volume.get("projected") or {}).get("sources") or ()):
            sat = source.get("serviceAccountToken")
            if sat is not None:
                found.append(TokenProjection(
                    key=projected_token_key(name, index),
                    audience=sat.get("audience") or None,
                    expiration_seconds=int(sat.get("expirationSeconds") or DEFAULT_TOKEN_EXPIRATION),
                ))
    return found


@dataclass(frozen=True, slots=True)
class TokenVolume:
    """Replace the tenant's projected `kube-api-access-*` volume by super secret `secret_name`.

    The secret holds the tenant token, `ca.crt` and `namespace`, the same files as the projected
    volume, so mounts stay valid and the Pod authenticates to its tenant apiserver. Tokens of
    other projections are keys of the same secret (`token_projections`).
    """

    secret_name: str
    volume_prefix: str = TOKEN_VOLUME_PREFIX


@dataclass(frozen=True, slots=True, kw_only=True)
class PodContext:
    """Everything `mutate_pod` needs besides the Pod, already resolved by the caller."""

    cluster_key: tenancy.ClusterKey
    tenant_namespace: str
    tenant_pod_uid: str
    cluster_domain: str = ""
    # Super services of the Pod's super namespace (env injection when service links are on).
    services: tuple[ServiceInfo, ...] = ()
    # The control-plane service (super copy of tenant default/kubernetes, or root-ns apiserver-svc
    # with SuperClusterServiceNetwork): its IP goes to hostAliases, and its variables are always
    # injected under the tenant-visible name `kubernetes` (KUBERNETES_SERVICE_PORT, ...).
    control_plane: ServiceInfo | None = None
    dns_ip: str | None = None  # ClusterIP of the super copy of tenant kube-system/kube-dns
    dns_options: tuple[tuple[str, str | None], ...] = (("ndots", "5"),)
    disable_service_account_token: bool = True
    disable_service_links: bool = False
    mutate_dns: bool = True  # False when the tenant opted out (see dns_mutation_disabled)
    # Tenant service-account token secrets used by the Pod → super secret name (None: not synced).
    sa_secrets: Mapping[str, str | None] = field(default_factory=dict)
    token_volume: TokenVolume | None = None
    root_ca_configmap: str | None = None  # e.g. "tenant-kube-root-ca.crt" (RootCACertConfigMapSupport)
    # The tenant Pod's own labels and annotations, for downward-API references to keys that are
    # not copied down (e.g. the Job controller's `batch.kubernetes.io/job-completion-index`).
    tenant_labels: Mapping[str, str] = field(default_factory=dict)
    tenant_annotations: Mapping[str, str] = field(default_factory=dict)
    # The nodes the Pod's node selection picks among the tenant's virtual nodes when it names
    # labels the tenant set on them (`nodeselection`); None: the selection goes down as is.
    selected_nodes: tuple[str, ...] | None = None


def reject_reason(tenant_pod: Mapping[str, Any]) -> str | None:
    """The `NotSupported` event message if the tenant Pod cannot be synced, else None.

    Nothing is refused today: a preset `spec.nodeName` becomes node affinity (`_pin_to_node`),
    and projected `serviceAccountToken`s get tenant tokens (`token_projections`).
    """
    return None


def dns_mutation_disabled(tenant_pod: Mapping[str, Any], *, allow_opt_out: bool) -> bool:
    """Tell whether the tenant opted out of DNS mutation (gate TenantAllowDNSPolicy + label)."""
    labels = (tenant_pod.get("metadata") or {}).get("labels") or {}
    return allow_opt_out and labels.get(naming.LABEL_DISABLE_DNS_POLICY_MUTATION) == "true"


def trust_bundle_selection(source: Mapping[str, Any]) -> dict[str, Any]:
    """What a `clusterTrustBundle` projection selects: one bundle by name, or a signer's bundles
    by label selector (None matches nothing, {} everything, as the kubelet reads it)."""
    if source.get("name"):
        return {"name": source["name"]}
    return {"signerName": source.get("signerName", ""), "labelSelector": source.get("labelSelector")}


def trust_bundle_configmap(selection: Mapping[str, Any]) -> str:
    """The super ConfigMap holding what `selection` selects, one per selection and namespace."""
    canonical = json.dumps(selection, sort_keys=True, separators=(",", ":"))
    return TRUST_BUNDLE_CONFIGMAP_PREFIX + hashlib.sha256(canonical.encode()).hexdigest()[:20]


def trust_bundle_sources(pod: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every `clusterTrustBundle` projection of the Pod's volumes."""
    volumes = (pod.get("spec") or {}).get("volumes") or ()
    return [source["clusterTrustBundle"] for volume in volumes
            for source in (volume.get("projected") or {}).get("sources") or ()
            if source.get("clusterTrustBundle")]


@dataclass(frozen=True, slots=True)
class PodCertificateSource:
    """One `podCertificate` projection: its volume, its index among the volume's sources, its spec."""

    volume: str
    index: int
    spec: Mapping[str, Any]

    @property
    def key_prefix(self) -> str:
        return f"{self.volume}.{self.index}"


def pod_certificate_sources(pod: Mapping[str, Any]) -> list[PodCertificateSource]:
    """Every `podCertificate` projection of the Pod."""
    return [PodCertificateSource(str(volume.get("name", "")), index, source["podCertificate"])
            for volume in (pod.get("spec") or {}).get("volumes") or ()
            for index, source in enumerate((volume.get("projected") or {}).get("sources") or ())
            if source.get("podCertificate")]


def pod_certificate_secret(tenant_pod_uid: str) -> str:
    """The super Secret with a Pod's issued certificates (`syncer/podcerts.py` writes it)."""
    return POD_CERTIFICATE_SECRET_PREFIX + hashlib.sha256(tenant_pod_uid.encode()).hexdigest()[:20]


def pod_certificate_items(source: PodCertificateSource) -> list[dict[str, str]]:
    """The Secret source items standing in for one projection: `<volume>.<index>.{bundle,key,chain}`."""
    wanted = (("credentialBundlePath", "bundle"), ("keyPath", "key"), ("certificateChainPath", "chain"))
    return [{"key": f"{source.key_prefix}.{suffix}", "path": str(source.spec[field])}
            for field, suffix in wanted if source.spec.get(field)]


def secret_volume_names(pod: Mapping[str, Any]) -> set[str]:
    """Names of the secrets mounted as volumes, for resolving `PodContext.sa_secrets`."""
    volumes = (pod.get("spec") or {}).get("volumes") or ()
    return {v["secret"]["secretName"] for v in volumes if (v.get("secret") or {}).get("secretName")}


def mutate_pod(super_pod: Mapping[str, Any], ctx: PodContext) -> dict[str, Any]:
    """Return the super Pod to create from a converted tenant Pod.

    Raises:
        ServiceNotReady: neither the control-plane service nor any other service is synced.
        SecretNotReady: a service-account token secret volume has no super copy yet.
        TokenNotReady: a serviceAccountToken projection would be left to the super kubelet.
    """
    pod = wire.copy_json(dict(super_pod))
    spec: dict[str, Any] = pod.setdefault("spec", {})
    if ctx.token_volume is not None:
        _replace_token_volume(spec, ctx.token_volume)
        _replace_projected_tokens(spec, ctx.token_volume.secret_name)
    _refuse_super_tokens(spec)
    _replace_trust_bundles(spec)
    _replace_pod_certificates(spec, str((super_pod.get("metadata") or {}).get("annotations", {}).get(
        naming.ANNOTATION_UID, "")))
    if ctx.disable_service_account_token:
        spec["automountServiceAccountToken"] = False
    if ctx.root_ca_configmap:
        _rename_root_ca(spec, ctx.root_ca_configmap)
    if ctx.disable_service_links:
        spec["enableServiceLinks"] = False

    pod["status"] = {}
    if ctx.selected_nodes:
        nodeselection.pin(spec, ctx.selected_nodes)
    if spec.get("nodeName"):
        _pin_to_node(spec, str(spec["nodeName"]))
    spec.pop("nodeName", None)
    _drop_system_priority(spec)
    if ctx.control_plane is None and not ctx.services:
        raise ServiceNotReady
    _add_host_aliases(spec, ctx)
    _inject_env(spec, ctx)
    _rewrite_downward_api(pod, ctx)
    _rewire_secret_volumes(spec, ctx)
    _scope_to_cluster(pod, ctx.cluster_key)
    if ctx.mutate_dns:
        _mutate_dns(spec, ctx)
    spec.pop("subdomain", None)
    return pod


def _containers(spec: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    for group in ("initContainers", "containers", "ephemeralContainers"):
        yield from spec.get(group) or ()


def _pin_to_node(spec: dict[str, Any], node: str) -> None:
    """A tenant Pod created with `spec.nodeName` (a node it saw, e.g. a vnode) asks for that
    node; the super Pod asks the super scheduler for it through required node affinity on
    the node's name, as DaemonSets do, so the super cluster's taints, capacity and ports still
    apply (a preset nodeName would bypass its scheduler). Every required term gets the field."""
    requirement = {"key": "metadata.name", "operator": "In", "values": [node]}
    affinity = spec.setdefault("affinity", {}).setdefault("nodeAffinity", {})
    required = affinity.setdefault("requiredDuringSchedulingIgnoredDuringExecution", {})
    terms = required.get("nodeSelectorTerms") or [{}]
    for term in terms:
        term["matchFields"] = [f for f in term.get("matchFields") or () if f.get("key") != "metadata.name"]
        term["matchFields"].append(dict(requirement))
    required["nodeSelectorTerms"] = terms


def _drop_system_priority(spec: dict[str, Any]) -> None:
    """A tenant's system-critical Pod is critical in its own cluster only: in the super cluster a
    built-in class would let it preempt every other tenant's Pods (Kubernetes allows these
    classes in any namespace), so the super Pod gets the super cluster's default priority."""
    if str(spec.get("priorityClassName", "")).startswith(SYSTEM_PRIORITY_PREFIX):
        for field_name in ("priorityClassName", "priority", "preemptionPolicy"):
            spec.pop(field_name, None)


def _replace_token_volume(spec: dict[str, Any], token: TokenVolume) -> None:
    volumes = spec.get("volumes") or []
    for index, volume in enumerate(volumes):
        projected = volume.get("projected")
        if not volume.get("name", "").startswith(token.volume_prefix) or not projected:
            continue
        if not any("serviceAccountToken" in source for source in projected.get("sources") or ()):
            continue
        secret = {"secretName": token.secret_name, "defaultMode": projected.get("defaultMode", 0o644)}
        volumes[index] = {"name": volume["name"], "secret": secret}


def _replace_projected_tokens(spec: dict[str, Any], secret_name: str) -> None:
    """Each serviceAccountToken source left becomes the same path from its key of the token Secret."""
    for volume in spec.get("volumes") or ():
        sources: list[dict[str, Any]] = (volume.get("projected") or {}).get("sources") or []
        for index, source in enumerate(sources):
            sat = source.get("serviceAccountToken")
            if sat is None:
                continue
            key = projected_token_key(volume["name"], index)
            sources[index] = {"secret": {"name": secret_name, "items": [{"key": key, "path": sat.get("path", "token")}]}}


def _refuse_super_tokens(spec: dict[str, Any]) -> None:
    for volume in spec.get("volumes") or ():
        if any("serviceAccountToken" in s for s in (volume.get("projected") or {}).get("sources") or ()):
            raise TokenNotReady(str(volume.get("name", "")))


def _replace_trust_bundles(spec: dict[str, Any]) -> None:
    """A `clusterTrustBundle` source becomes the same path from the ConfigMap the syncer fills
    with the tenant's bundles (the super kubelet would read the super cluster's). Not optional:
    a key that is present only when something matched, so the kubelet blocks the Pod as it
    would; optional: a key that is always there, empty when nothing matched."""
    for volume in spec.get("volumes") or ():
        sources: list[dict[str, Any]] = (volume.get("projected") or {}).get("sources") or []
        for index, source in enumerate(sources):
            ctb = source.get("clusterTrustBundle")
            if ctb is None:
                continue
            key = TRUST_BUNDLE_OR_EMPTY_KEY if ctb.get("optional") else TRUST_BUNDLE_KEY
            name = trust_bundle_configmap(trust_bundle_selection(ctb))
            sources[index] = {"configMap": {"name": name, "items": [{"key": key, "path": ctb.get("path", "")}]}}


def _replace_pod_certificates(spec: dict[str, Any], tenant_pod_uid: str) -> None:
    """A `podCertificate` source becomes the same paths from the Secret the syncer writes once
    the tenant's signer issued the certificate; the super kubelet waits for it, as it waits for
    its own request to be answered."""
    for source in pod_certificate_sources({"spec": spec}):
        sources = spec["volumes"][[v.get("name") for v in spec["volumes"]].index(source.volume)]["projected"]["sources"]
        sources[source.index] = {"secret": {"name": pod_certificate_secret(tenant_pod_uid),
                                            "items": pod_certificate_items(source)}}


def _rename_root_ca(spec: dict[str, Any], new_name: str) -> None:
    def rename(ref: dict[str, Any] | None) -> None:
        if ref and ref.get("name") == ROOT_CA_CONFIGMAP:
            ref["name"] = new_name

    for volume in spec.get("volumes") or ():
        rename(volume.get("configMap"))
        for source in (volume.get("projected") or {}).get("sources") or ():
            rename(source.get("configMap"))
    for container in _containers(spec):
        for env in container.get("env") or ():
            rename((env.get("valueFrom") or {}).get("configMapKeyRef"))
        for env_from in container.get("envFrom") or ():
            rename(env_from.get("configMapRef"))


def _add_host_aliases(spec: dict[str, Any], ctx: PodContext) -> None:
    if ctx.control_plane is None or not _has_ip(ctx.control_plane):
        return
    hostnames = list(CONTROL_PLANE_HOSTNAMES)
    if ctx.cluster_domain:
        hostnames.append(f"kubernetes.default.svc.{ctx.cluster_domain}")
    spec.setdefault("hostAliases", []).append({"ip": ctx.control_plane.cluster_ip, "hostnames": hostnames})


def _has_ip(svc: ServiceInfo) -> bool:
    return bool(svc.cluster_ip) and svc.cluster_ip != "None"


def env_var_name(service_name: str) -> str:
    """Docker-link variable stem of a service name: upper case, `-` → `_`."""
    return service_name.upper().replace("-", "_")


def service_env(services: Iterable[ServiceInfo]) -> dict[str, str]:
    """Docker-link style variables for `services` (headless ones skipped), sorted by service name."""
    env: dict[str, str] = {}
    for svc in sorted(services, key=lambda s: s.name):
        if not _has_ip(svc):
            continue
        stem = env_var_name(svc.name)
        env[f"{stem}_SERVICE_HOST"] = svc.cluster_ip
        if not svc.ports:
            continue
        env[f"{stem}_SERVICE_PORT"] = str(svc.ports[0].port)
        for port in svc.ports:
            if port.name:
                env[f"{stem}_SERVICE_PORT_{env_var_name(port.name)}"] = str(port.port)
        host = f"[{svc.cluster_ip}]" if ":" in svc.cluster_ip else svc.cluster_ip
        for index, port in enumerate(svc.ports):
            proto = port.protocol.upper()
            url = f"{proto.lower()}://{host}:{port.port}"
            if index == 0:
                env[f"{stem}_PORT"] = url
            prefix = f"{stem}_PORT_{port.port}_{proto}"
            env[prefix] = url
            env[f"{prefix}_PROTO"] = proto.lower()
            env[f"{prefix}_PORT"] = str(port.port)
            env[f"{prefix}_ADDR"] = svc.cluster_ip
    return env


def _inject_env(spec: dict[str, Any], ctx: PodContext) -> None:
    by_name: dict[str, ServiceInfo] = {}
    if spec.get("enableServiceLinks", True):
        by_name.update((s.name, s) for s in ctx.services)
    if ctx.control_plane is not None:
        by_name["kubernetes"] = ServiceInfo(
            "kubernetes", ctx.control_plane.namespace, ctx.control_plane.cluster_ip, ctx.control_plane.ports
        )
    injected = service_env(by_name.values())
    injected["KUBERNETES_SERVICE_HOST"] = "kubernetes"
    for container in _containers(spec):
        user_env = container.get("env") or []
        defined = {e.get("name") for e in user_env}
        # Injected first, so that user variables may refer to them as $(NAME); user names win.
        ours = [{"name": k, "value": v} for k, v in injected.items() if k not in defined]
        container["env"] = ours + user_env


_META_KEY_PATH = re.compile(r"metadata\.(labels|annotations)\['([^']*)'\]$")


def _rewrite_downward_api(pod: dict[str, Any], ctx: PodContext) -> None:
    """Environment variables from the tenant's view of the Pod become literals where the super
    Pod differs: its namespace and UID, and label or annotation keys not copied down (the
    kubelet would read an empty value from the super Pod)."""
    literals = {"metadata.namespace": ctx.tenant_namespace, "metadata.uid": ctx.tenant_pod_uid}
    meta = pod.get("metadata") or {}
    tenant_meta = {"labels": ctx.tenant_labels, "annotations": ctx.tenant_annotations}
    for container in _containers(pod["spec"]):
        for index, env in enumerate(container.get("env") or ()):
            path = ((env.get("valueFrom") or {}).get("fieldRef") or {}).get("fieldPath", "")
            value = literals.get(path)
            m = _META_KEY_PATH.match(path)
            if m is not None and m.group(2) not in (meta.get(m.group(1)) or {}):
                value = tenant_meta[m.group(1)].get(m.group(2))
            if value is not None:
                container["env"][index] = {"name": env["name"], "value": value}


def _rewire_secret_volumes(spec: dict[str, Any], ctx: PodContext) -> None:
    renamed: dict[str, str] = {}
    for volume in spec.get("volumes") or ():
        secret = volume.get("secret") or {}
        tenant_name: str = secret.get("secretName") or ""
        if tenant_name not in ctx.sa_secrets:
            continue
        super_name = ctx.sa_secrets[tenant_name]
        if super_name is None:
            if secret.get("optional"):
                continue
            raise SecretNotReady(tenant_name)
        secret["secretName"] = super_name
        if volume.get("name") == tenant_name:  # auto-generated volume: follow the secret's name
            volume["name"] = renamed[tenant_name] = super_name
    if not renamed:
        return
    for container in _containers(spec):
        for mount in container.get("volumeMounts") or ():
            if mount.get("name") in renamed:
                mount["name"] = renamed[mount["name"]]


def _scope_to_cluster(pod: dict[str, Any], key: tenancy.ClusterKey) -> None:
    meta = pod.setdefault("metadata", {})
    meta.setdefault("labels", {})[naming.LABEL_CLUSTER] = key
    affinity = pod["spec"].get("affinity") or {}
    for kind in ("podAffinity", "podAntiAffinity"):
        rules = affinity.get(kind) or {}
        terms = list(rules.get("requiredDuringSchedulingIgnoredDuringExecution") or ())
        terms += [
            w.get("podAffinityTerm") or {} for w in rules.get("preferredDuringSchedulingIgnoredDuringExecution") or ()
        ]
        for term in terms:
            selector = term.get("labelSelector")
            if selector is not None:
                selector.setdefault("matchLabels", {})[naming.LABEL_CLUSTER] = key
            if term.get("namespaces"):
                term["namespaces"] = [naming.super_namespace(key, ns) for ns in term["namespaces"]]


def _dedupe(values: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(values))


def _mutate_dns(spec: dict[str, Any], ctx: PodContext) -> None:
    policy = spec.get("dnsPolicy") or "ClusterFirst"
    if policy == "ClusterFirst" and spec.get("hostNetwork"):
        return
    if policy not in ("ClusterFirst", "ClusterFirstWithHostNet"):
        return  # None, Default: the tenant chose; leave them alone
    if not ctx.dns_ip:
        spec["dnsPolicy"] = "Default"
        return
    spec["dnsPolicy"] = "None"
    existing = spec.get("dnsConfig") or {}
    domain = ctx.cluster_domain
    searches = [f"{ctx.tenant_namespace}.svc.{domain}", f"svc.{domain}", domain] if domain else []
    options: dict[str, str | None] = dict(ctx.dns_options)
    for option in existing.get("options") or ():
        options.pop(option.get("name"), None)  # the Pod's own value wins and keeps its place last
        options[option.get("name")] = option.get("value")
    config: dict[str, Any] = {
        "nameservers": _dedupe([ctx.dns_ip, *(existing.get("nameservers") or ())])[:MAX_NAMESERVERS]
    }
    if searches or existing.get("searches"):
        config["searches"] = _dedupe([*searches, *(existing.get("searches") or ())])
    if options:
        config["options"] = [{"name": n} if v is None else {"name": n, "value": v} for n, v in options.items()]
    spec["dnsConfig"] = config
