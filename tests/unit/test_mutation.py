"""Pure Pod mutation for downward sync (SPEC §3.7 Pod DWS create, steps 1-9 and the mutators)."""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import pytest

from appliance.syncer import equality, mutation
from appliance.syncer.mutation import PodContext, ServiceInfo, ServicePort, TokenVolume
from appliance.util import naming

KEY = "ns-fd1b34-name"
SUPER_NS = f"{KEY}-app"
CONTROL_PLANE = ServiceInfo("kubernetes", f"{KEY}-default", "10.96.0.10", (ServicePort(443, "https"),))
WEB = ServiceInfo("web", SUPER_NS, "10.96.0.20", (ServicePort(80, "http"), ServicePort(53, "dns", "UDP")))
DNS = ServiceInfo("kube-dns", SUPER_NS, "10.96.0.30", (ServicePort(53, "dns", "UDP"),))


def context(**overrides: Any) -> PodContext:
    base: dict[str, Any] = {
        "cluster_key": KEY,
        "tenant_namespace": "app",
        "tenant_pod_uid": "pod-uid",
        "cluster_domain": "cluster.local",
        "services": (WEB,),
        "control_plane": CONTROL_PLANE,
        "dns_ip": "10.96.0.30",
    }
    return PodContext(**{**base, **overrides})


def super_pod(**spec: Any) -> dict[str, Any]:
    """A Pod as conversion.build_super_object returns it."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p", "namespace": SUPER_NS, "labels": {"app": "web"}, "annotations": {}},
        "spec": {"containers": [{"name": "c", "image": "nginx"}], **spec},
        "status": {"phase": "Running", "podIP": "10.32.1.1"},
    }


def env_of(pod: dict[str, Any], index: int = 0) -> dict[str, str]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in pod["spec"]["containers"][index]["env"]}


def test_new_pod() -> None:
    """A new Pod: status reset, nodeName and subdomain cleared, control-plane alias, cluster label."""
    before = super_pod(nodeName="tenant-node", subdomain="sub", hostname="h")
    source = copy.deepcopy(before)
    pod = mutation.mutate_pod(before, context())
    assert source == before
    assert {} == pod["status"]
    assert "nodeName" not in pod["spec"]
    assert "subdomain" not in pod["spec"]
    assert "h" == pod["spec"]["hostname"]
    assert [
        {
            "ip": "10.96.0.10",
            "hostnames": [
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ],
        }
    ] == pod["spec"]["hostAliases"]
    assert KEY == pod["metadata"]["labels"][naming.LABEL_CLUSTER]
    assert pod["spec"]["automountServiceAccountToken"] is False
    assert "enableServiceLinks" not in pod["spec"]
    env = env_of(pod)
    assert "kubernetes" == env["KUBERNETES_SERVICE_HOST"]
    assert "443" == env["KUBERNETES_SERVICE_PORT"]
    assert "tcp://10.96.0.10:443" == env["KUBERNETES_PORT"]
    assert "10.96.0.20" == env["WEB_SERVICE_HOST"]


@pytest.mark.parametrize(
    ("tenant_spec", "expected"),
    [
        pytest.param({"priorityClassName": "system-node-critical", "priority": 2000001000,
                      "preemptionPolicy": "PreemptLowerPriority"}, {}, id="system-node-critical"),
        pytest.param({"priorityClassName": "system-cluster-critical", "priority": 2000000000}, {},
                     id="system-cluster-critical"),
        pytest.param({"priorityClassName": "batch", "priority": 10}, {"priorityClassName": "batch", "priority": 10},
                     id="other-class-kept"),
    ],
)
def test_system_priority_stays_in_the_tenant(tenant_spec: dict[str, Any], expected: dict[str, Any]) -> None:
    """Built-in system-critical classes are dropped from the super Pod (it would preempt other tenants)."""
    spec = mutation.mutate_pod(super_pod(**tenant_spec), context())["spec"]
    fields = ("priorityClassName", "priority", "preemptionPolicy")
    assert expected == {k: spec[k] for k in fields if k in spec}


def test_existing_host_aliases_kept() -> None:
    """Tenant hostAliases are kept; the control-plane alias is appended."""
    pod = mutation.mutate_pod(
        super_pod(hostAliases=[{"ip": "1.2.3.4", "hostnames": ["x"]}]), context(cluster_domain="")
    )
    assert [
        {"ip": "1.2.3.4", "hostnames": ["x"]},
        {"ip": "10.96.0.10", "hostnames": ["kubernetes", "kubernetes.default", "kubernetes.default.svc"]},
    ] == pod["spec"]["hostAliases"]


@pytest.mark.parametrize(
    ("ctx", "tenant_spec", "expect_links", "expect_flag"),
    [
        pytest.param(context(), {}, True, None, id="links-default-on"),
        pytest.param(context(disable_service_links=True), {}, False, False, id="disable-service-links"),
        pytest.param(context(), {"enableServiceLinks": False}, False, False, id="tenant-disabled-links"),
    ],
)
def test_service_links(ctx: PodContext, tenant_spec: dict[str, Any], expect_links: bool, expect_flag: Any) -> None:
    """Same-namespace service variables follow enableServiceLinks; the control plane's always come."""
    pod = mutation.mutate_pod(super_pod(**tenant_spec), ctx)
    env = env_of(pod)
    assert expect_links == ("WEB_SERVICE_HOST" in env)
    assert "10.96.0.10" == env["KUBERNETES_PORT_443_TCP_ADDR"]
    assert expect_flag == pod["spec"].get("enableServiceLinks")


def test_without_any_services() -> None:
    """No synced service at all: the Pod waits (ServiceNotReady, message 'service is not ready')."""
    with pytest.raises(mutation.ServiceNotReady, match=r"^service is not ready$"):
        mutation.mutate_pod(super_pod(), context(services=(), control_plane=None))


@pytest.mark.parametrize(
    ("disable_links", "expected_dns_env"),
    [pytest.param(False, True, id="with-links"), pytest.param(True, False, id="without-links")],
)
def test_only_a_dns_service(disable_links: bool, expected_dns_env: bool) -> None:
    """Only the DNS service synced: the Pod is created without alias, env only with service links."""
    pod = mutation.mutate_pod(
        super_pod(), context(services=(DNS,), control_plane=None, disable_service_links=disable_links)
    )
    assert "hostAliases" not in pod["spec"]
    env = env_of(pod)
    assert expected_dns_env == ("KUBE_DNS_SERVICE_HOST" in env)
    assert "kubernetes" == env["KUBERNETES_SERVICE_HOST"]
    assert "KUBERNETES_SERVICE_PORT" not in env


def test_service_env_docker_link_variables() -> None:
    """Docker-link variables per port, names upper-cased with `-` → `_`, protocol lower-cased in URLs."""
    svc = ServiceInfo("my-svc", SUPER_NS, "10.0.0.5", (ServicePort(80, "http-web"), ServicePort(53, "", "UDP")))
    assert {
        "MY_SVC_SERVICE_HOST": "10.0.0.5",
        "MY_SVC_SERVICE_PORT": "80",
        "MY_SVC_SERVICE_PORT_HTTP_WEB": "80",
        "MY_SVC_PORT": "tcp://10.0.0.5:80",
        "MY_SVC_PORT_80_TCP": "tcp://10.0.0.5:80",
        "MY_SVC_PORT_80_TCP_PROTO": "tcp",
        "MY_SVC_PORT_80_TCP_PORT": "80",
        "MY_SVC_PORT_80_TCP_ADDR": "10.0.0.5",
        "MY_SVC_PORT_53_UDP": "udp://10.0.0.5:53",
        "MY_SVC_PORT_53_UDP_PROTO": "udp",
        "MY_SVC_PORT_53_UDP_PORT": "53",
        "MY_SVC_PORT_53_UDP_ADDR": "10.0.0.5",
    } == mutation.service_env([svc])


@pytest.mark.parametrize(
    ("svc", "expected"),
    [
        pytest.param(ServiceInfo("h", "n", "None", (ServicePort(80),)), {}, id="headless"),
        pytest.param(ServiceInfo("e", "n", "", (ServicePort(80),)), {}, id="no-ip"),
        pytest.param(ServiceInfo("np", "n", "10.0.0.1"), {"NP_SERVICE_HOST": "10.0.0.1"}, id="no-ports"),
        pytest.param(
            ServiceInfo("v6", "n", "fd00::1", (ServicePort(80),)),
            {
                "V6_SERVICE_HOST": "fd00::1",
                "V6_SERVICE_PORT": "80",
                "V6_PORT": "tcp://[fd00::1]:80",
                "V6_PORT_80_TCP": "tcp://[fd00::1]:80",
                "V6_PORT_80_TCP_PROTO": "tcp",
                "V6_PORT_80_TCP_PORT": "80",
                "V6_PORT_80_TCP_ADDR": "fd00::1",
            },
            id="ipv6",
        ),
    ],
)
def test_service_env_edge_cases(svc: ServiceInfo, expected: dict[str, str]) -> None:
    """Headless and IP-less services give no variables; IPv6 addresses are bracketed in URLs."""
    assert expected == mutation.service_env([svc])


def test_env_order_is_deterministic_and_user_wins() -> None:
    """Injected variables are sorted by service name, come before the user's, and never override them."""
    services = (ServiceInfo("zeta", SUPER_NS, "10.0.0.9"), ServiceInfo("alpha", SUPER_NS, "10.0.0.8"))
    user_env = [{"name": "ALPHA_SERVICE_HOST", "value": "mine"}, {"name": "URL", "value": "$(ZETA_SERVICE_HOST)"}]
    pod = mutation.mutate_pod(
        super_pod(containers=[{"name": "c", "image": "i", "env": user_env}]), context(services=services)
    )
    names = [e["name"] for e in pod["spec"]["containers"][0]["env"]]
    assert names[-2:] == ["ALPHA_SERVICE_HOST", "URL"]
    assert 1 == names.count("ALPHA_SERVICE_HOST")
    assert names.index("KUBERNETES_SERVICE_HOST") < names.index("ZETA_SERVICE_HOST")
    assert "mine" == env_of(pod)["ALPHA_SERVICE_HOST"]
    shuffled = mutation.mutate_pod(
        super_pod(containers=[{"name": "c", "image": "i", "env": user_env}]), context(services=services[::-1])
    )
    assert pod == shuffled


def test_env_injected_into_init_containers() -> None:
    """Init containers get the same variables as containers."""
    pod = mutation.mutate_pod(super_pod(initContainers=[{"name": "i", "image": "busybox"}]), context())
    assert (
        "kubernetes"
        == {e["name"]: e["value"] for e in pod["spec"]["initContainers"][0]["env"]}["KUBERNETES_SERVICE_HOST"]
    )


def test_ephemeral_containers_are_mutated_like_the_others() -> None:
    """A `kubectl debug` container added later sees the same service variables and literal
    downward-API values as the Pod's own containers."""
    debug = {"name": "debugger", "image": "busybox",
             "env": [{"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}]}
    pod = mutation.mutate_pod(super_pod(ephemeralContainers=[debug]), context())
    env = {e["name"]: e.get("value") for e in pod["spec"]["ephemeralContainers"][0]["env"]}
    assert env["KUBERNETES_SERVICE_HOST"] == "kubernetes" and env["NS"] == "app"
    assert "WEB_SERVICE_HOST" in env


def test_missing_ephemeral_containers_by_name() -> None:
    """Only tenant ephemeral containers the super Pod lacks are to be added, in tenant order."""
    tenant = {"spec": {"ephemeralContainers": [{"name": "a"}, {"name": "b"}, {"name": "c"}]}}
    assert equality.missing_ephemeral_containers(tenant, {"spec": {"ephemeralContainers": [{"name": "b"}]}}) == ["a", "c"]
    assert equality.missing_ephemeral_containers(tenant, tenant) == []
    assert equality.missing_ephemeral_containers({"spec": {}}, tenant) == []


def test_downward_api_keys_not_copied_down_become_tenant_literals() -> None:
    """An env var from a label or annotation the super Pod lacks (an opaque key such as the Job
    controller's completion index) gets the tenant's value; copied keys, and keys neither Pod
    has, stay references."""
    def ref(path: str) -> dict[str, Any]:
        return {"valueFrom": {"fieldRef": {"fieldPath": path}}}
    pod = super_pod(containers=[{"name": "c", "image": "busybox", "env": [
        {"name": "INDEX", **ref("metadata.annotations['batch.kubernetes.io/job-completion-index']")},
        {"name": "APP", **ref("metadata.labels['app']")},
        {"name": "GONE", **ref("metadata.labels['batch.kubernetes.io/job-name']")},
    ]}])
    out = mutation.mutate_pod(pod, context(
        tenant_annotations={"batch.kubernetes.io/job-completion-index": "3"}, tenant_labels={"app": "web"}))
    env = {e["name"]: e for e in out["spec"]["containers"][0]["env"]}
    assert env["INDEX"] == {"name": "INDEX", "value": "3"}
    assert env["APP"] == {"name": "APP", **ref("metadata.labels['app']")}
    assert env["GONE"] == {"name": "GONE", **ref("metadata.labels['batch.kubernetes.io/job-name']")}


def test_tenant_kubernetes_service_host_wins() -> None:
    """A user-defined KUBERNETES_SERVICE_HOST is not replaced."""
    containers = [{"name": "c", "image": "i", "env": [{"name": "KUBERNETES_SERVICE_HOST", "value": "api.example"}]}]
    assert (
        "api.example"
        == env_of(mutation.mutate_pod(super_pod(containers=containers), context()))["KUBERNETES_SERVICE_HOST"]
    )


def test_downward_api_rewritten() -> None:
    """fieldRef namespace and uid become tenant literals; name, labels and annotations stay fieldRefs."""
    refs = ["metadata.namespace", "metadata.uid", "metadata.name", "metadata.labels['a']", "metadata.annotations"]
    env = [{"name": f"V{i}", "valueFrom": {"fieldRef": {"fieldPath": p}}} for i, p in enumerate(refs)]
    pod = mutation.mutate_pod(super_pod(containers=[{"name": "c", "image": "i", "env": env}]), context())
    values = env_of(pod)
    assert "app" == values["V0"]
    assert "pod-uid" == values["V1"]
    for i, path in enumerate(refs[2:], start=2):
        assert {"fieldRef": {"fieldPath": path}} == values[f"V{i}"]


def _sa_pod(optional: bool = False) -> dict[str, Any]:
    return super_pod(
        containers=[
            {
                "name": "c",
                "image": "i",
                "volumeMounts": [
                    {"name": "default-token-abcde", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"},
                    {"name": "custom", "mountPath": "/etc/custom"},
                ],
            }
        ],
        volumes=[
            {"name": "default-token-abcde", "secret": {"secretName": "default-token-abcde", "optional": optional}},
            {"name": "custom", "secret": {"secretName": "my-secret"}},
            {"name": "renamed-vol", "secret": {"secretName": "other-token-xyz"}},
        ],
    )


def test_sa_secret_volume_rewired() -> None:
    """SA token secret volumes point at the super copy; auto-named volumes and mounts follow; custom untouched."""
    ctx = context(sa_secrets={"default-token-abcde": "default-token-q7z9k", "other-token-xyz": "other-token-m2n3p"})
    pod = mutation.mutate_pod(_sa_pod(), ctx)
    assert [
        {"name": "default-token-q7z9k", "secret": {"secretName": "default-token-q7z9k", "optional": False}},
        {"name": "custom", "secret": {"secretName": "my-secret"}},
        {"name": "renamed-vol", "secret": {"secretName": "other-token-m2n3p"}},
    ] == pod["spec"]["volumes"]
    assert ["default-token-q7z9k", "custom"] == [m["name"] for m in pod["spec"]["containers"][0]["volumeMounts"]]


@pytest.mark.parametrize(
    ("optional", "raises"),
    [pytest.param(False, True, id="required-missing"), pytest.param(True, False, id="optional-missing")],
)
def test_sa_secret_missing(optional: bool, raises: bool) -> None:
    """A required SA token volume without super copy waits (SecretNotReady); an optional one is left."""
    ctx = context(sa_secrets={"default-token-abcde": None})
    if raises:
        with pytest.raises(mutation.SecretNotReady) as info:
            mutation.mutate_pod(_sa_pod(optional), ctx)
        assert "default-token-abcde" == info.value.secret_name
    else:
        pod = mutation.mutate_pod(_sa_pod(optional), ctx)
        assert "default-token-abcde" == pod["spec"]["volumes"][0]["secret"]["secretName"]


def test_secret_volume_names() -> None:
    """The caller learns which secrets to resolve from the Pod's secret volumes."""
    assert {"default-token-abcde", "my-secret", "other-token-xyz"} == mutation.secret_volume_names(_sa_pod())


def _affinity_term(namespaces: list[str] | None = None, selector: Any = ...) -> dict[str, Any]:
    term: dict[str, Any] = {"topologyKey": "kubernetes.io/hostname"}
    if selector is not ...:
        term["labelSelector"] = selector
    if namespaces is not None:
        term["namespaces"] = namespaces
    return term


def test_affinity_scoped_to_cluster() -> None:
    """Every (anti-)affinity term with a selector gets the cluster label; namespaces are mapped."""
    affinity = {
        "podAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": [
                _affinity_term(["app", "db"], {"matchLabels": {"app": "db"}}),
                _affinity_term(selector={}),
            ]
        },
        "podAntiAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 10, "podAffinityTerm": _affinity_term(selector={"matchExpressions": []})},
                {"weight": 5, "podAffinityTerm": _affinity_term()},
            ]
        },
        "nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": []}},
    }
    pod = mutation.mutate_pod(super_pod(affinity=affinity), context())
    cluster = {naming.LABEL_CLUSTER: KEY}
    result = pod["spec"]["affinity"]
    required = result["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert {"matchLabels": {"app": "db", **cluster}} == required[0]["labelSelector"]
    assert [f"{KEY}-app", f"{KEY}-db"] == required[0]["namespaces"]
    assert {"matchLabels": cluster} == required[1]["labelSelector"]
    preferred = result["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert {"matchExpressions": [], "matchLabels": cluster} == preferred[0]["podAffinityTerm"]["labelSelector"]
    assert "labelSelector" not in preferred[1]["podAffinityTerm"]
    assert affinity["nodeAffinity"] == result["nodeAffinity"]


SEARCHES = ["app.svc.cluster.local", "svc.cluster.local", "cluster.local"]
CLUSTER_DNS = {"nameservers": ["10.96.0.30"], "searches": SEARCHES, "options": [{"name": "ndots", "value": "5"}]}


@pytest.mark.parametrize(
    ("spec", "ctx", "expected_policy", "expected_config"),
    [
        pytest.param(
            {"dnsPolicy": "None", "dnsConfig": {"nameservers": ["1.1.1.1"]}},
            context(),
            "None",
            {"nameservers": ["1.1.1.1"]},
            id="none-untouched",
        ),
        pytest.param({"dnsPolicy": "Default"}, context(), "Default", None, id="default-untouched"),
        pytest.param({"dnsPolicy": "ClusterFirst"}, context(), "None", CLUSTER_DNS, id="cluster-first"),
        pytest.param({}, context(), "None", CLUSTER_DNS, id="unset-means-cluster-first"),
        pytest.param(
            {"dnsPolicy": "ClusterFirstWithHostNet", "hostNetwork": True},
            context(),
            "None",
            CLUSTER_DNS,
            id="cluster-first-with-host-net",
        ),
        pytest.param(
            {"dnsPolicy": "ClusterFirst", "hostNetwork": True},
            context(),
            "ClusterFirst",
            None,
            id="cluster-first-host-network-untouched",
        ),
        pytest.param({"dnsPolicy": "ClusterFirst"}, context(dns_ip=None), "Default", None, id="no-dns-service"),
        pytest.param(
            {"dnsPolicy": "ClusterFirst"},
            context(cluster_domain=""),
            "None",
            {"nameservers": ["10.96.0.30"], "options": [{"name": "ndots", "value": "5"}]},
            id="no-domain",
        ),
        pytest.param({"dnsPolicy": "ClusterFirst"}, context(mutate_dns=False), "ClusterFirst", None, id="opted-out"),
        pytest.param(
            {
                "dnsPolicy": "ClusterFirst",
                "dnsConfig": {
                    "nameservers": ["10.96.0.30", "8.8.8.8", "8.8.4.4", "9.9.9.9"],
                    "searches": ["corp.example", "svc.cluster.local"],
                    "options": [{"name": "edns0"}, {"name": "ndots", "value": "2"}],
                },
            },
            context(dns_options=(("ndots", "5"), ("timeout", "1"))),
            "None",
            {
                "nameservers": ["10.96.0.30", "8.8.8.8", "8.8.4.4"],
                "searches": [*SEARCHES, "corp.example"],
                "options": [{"name": "timeout", "value": "1"}, {"name": "edns0"}, {"name": "ndots", "value": "2"}],
            },
            id="cluster-first-config-merge",
        ),
    ],
)
def test_dns_policy_matrix(
    spec: dict[str, Any], ctx: PodContext, expected_policy: str, expected_config: dict[str, Any] | None
) -> None:
    """DNS policy and config mutation per policy, host network, DNS service and opt-out."""
    pod = mutation.mutate_pod(super_pod(**spec), ctx)
    assert expected_policy == pod["spec"].get("dnsPolicy", "ClusterFirst")
    assert expected_config == pod["spec"].get("dnsConfig")


@pytest.mark.parametrize(
    ("labels", "allow", "expected"),
    [
        pytest.param({naming.LABEL_DISABLE_DNS_POLICY_MUTATION: "true"}, True, True, id="label-and-gate"),
        pytest.param({naming.LABEL_DISABLE_DNS_POLICY_MUTATION: "true"}, False, False, id="label-without-gate"),
        pytest.param({naming.LABEL_DISABLE_DNS_POLICY_MUTATION: "yes"}, True, False, id="label-not-true"),
        pytest.param({}, True, False, id="gate-without-label"),
    ],
)
def test_dns_mutation_disabled(labels: dict[str, str], allow: bool, expected: bool) -> None:
    """The tenant opt-out label counts only with gate TenantAllowDNSPolicy."""
    assert expected == mutation.dns_mutation_disabled({"metadata": {"labels": labels}}, allow_opt_out=allow)


def _projected(name: str, source: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "projected": {"sources": [source]}}


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        pytest.param({"nodeName": "n1"}, None, id="node-name-preset"),
        pytest.param({"nodeName": ""}, None, id="empty-node-name"),
        pytest.param({}, None, id="no-node-name"),
        pytest.param({"volumes": [_projected("kube-api-access-x7k2p", {"serviceAccountToken": {"path": "token"}})]},
                     None, id="automatic-token-volume"),
        pytest.param({"volumes": [_projected("vault", {"serviceAccountToken": {"audience": "vault", "path": "t"}})]},
                     None, id="own-token-projection"),
        pytest.param({"volumes": [_projected("cfg", {"configMap": {"name": "c"}})]}, None, id="projected-configmap"),
    ],
)
def test_reject_reason(spec: dict[str, Any], expected: str | None) -> None:
    """Nothing is refused: a preset nodeName becomes node affinity, token projections get
    tenant tokens."""
    assert expected == mutation.reject_reason({"spec": spec})


def test_a_preset_node_name_becomes_required_node_affinity() -> None:
    """The super Pod asks the super scheduler for the node by name, in every required term the
    tenant wrote (ANDed with its own expressions), instead of bypassing the scheduler."""
    pod = mutation.mutate_pod(super_pod(nodeName="n1"), context())
    assert "nodeName" not in pod["spec"]
    pin = {"key": "metadata.name", "operator": "In", "values": ["n1"]}
    required = pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert required == {"nodeSelectorTerms": [{"matchFields": [pin]}]}
    zone = {"key": "zone", "operator": "In", "values": ["a"]}
    own = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [zone]}, {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["x"]}]},
    ]}}}
    pod = mutation.mutate_pod(super_pod(nodeName="n1", affinity=own), context())
    terms = pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert terms["nodeSelectorTerms"] == [{"matchExpressions": [zone], "matchFields": [pin]}, {"matchFields": [pin]}]
    assert "affinity" not in mutation.mutate_pod(super_pod(), context())["spec"]


def test_selected_nodes_replace_the_node_selection_with_node_names() -> None:
    """The super Pod asks for the selected nodes by name, one term per node (a node field
    selector takes one value), not for labels the super nodes never had; a preset nodeName
    still narrows it to that one node."""
    name_is = [{"key": "metadata.name", "operator": "In", "values": [n]} for n in ("n1", "n2")]
    own = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "e2e", "operator": "Exists"}]}]}}}
    pod = mutation.mutate_pod(super_pod(nodeSelector={"e2e": "42"}, affinity=own), context(selected_nodes=("n1", "n2")))
    assert "nodeSelector" not in pod["spec"]
    terms = pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert terms == {"nodeSelectorTerms": [{"matchFields": [name_is[0]]}, {"matchFields": [name_is[1]]}]}
    pinned = mutation.mutate_pod(super_pod(nodeSelector={"e2e": "42"}, nodeName="n2"), context(selected_nodes=("n1", "n2")))
    terms = pinned["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert terms == {"nodeSelectorTerms": [{"matchFields": [name_is[1]]}, {"matchFields": [name_is[1]]}]}
    kept = mutation.mutate_pod(super_pod(nodeSelector={"zone": "a"}), context())
    assert kept["spec"]["nodeSelector"] == {"zone": "a"} and "affinity" not in kept["spec"]


def test_automount_kept_when_not_disabled() -> None:
    """With disable_service_account_token off, the tenant's automount setting passes through."""
    pod = mutation.mutate_pod(
        super_pod(automountServiceAccountToken=True), context(disable_service_account_token=False)
    )
    assert pod["spec"]["automountServiceAccountToken"] is True


KUBE_API_ACCESS = {
    "name": "kube-api-access-x8k2j",
    "projected": {
        "defaultMode": 420,
        "sources": [
            {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
            {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
            {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}}]}},
        ],
    },
}


def test_token_volume_replaced() -> None:
    """The projected kube-api-access volume becomes a secret volume of the synced tenant token."""
    other = {"name": "kube-api-access-custom", "projected": {"sources": [{"configMap": {"name": "x"}}]}}
    pod = mutation.mutate_pod(
        super_pod(volumes=[KUBE_API_ACCESS, other]), context(token_volume=TokenVolume("default-token-q7z9k"))
    )
    assert [
        {"name": "kube-api-access-x8k2j", "secret": {"secretName": "default-token-q7z9k", "defaultMode": 420}},
        other,
    ] == pod["spec"]["volumes"]


def test_root_ca_configmap_renamed() -> None:
    """With RootCACertConfigMapSupport every reference to kube-root-ca.crt is renamed."""
    spec = {
        "volumes": [{"name": "bundle", "projected": {"sources": KUBE_API_ACCESS["projected"]["sources"][1:]}},
                    {"name": "ca", "configMap": {"name": "kube-root-ca.crt"}}],
        "containers": [
            {
                "name": "c",
                "image": "i",
                "env": [
                    {"name": "CA", "valueFrom": {"configMapKeyRef": {"name": "kube-root-ca.crt", "key": "ca.crt"}}}
                ],
                "envFrom": [{"configMapRef": {"name": "kube-root-ca.crt"}}, {"configMapRef": {"name": "other"}}],
            }
        ],
    }
    pod = mutation.mutate_pod(super_pod(**spec), context(root_ca_configmap="tenant-kube-root-ca.crt"))
    text = repr(pod)
    assert "'kube-root-ca.crt'" not in text
    assert 4 == text.count("tenant-kube-root-ca.crt")
    assert {"configMapRef": {"name": "other"}} == pod["spec"]["containers"][0]["envFrom"][1]


def test_context_is_frozen() -> None:
    """The mutation context is an immutable value."""
    with pytest.raises(dataclasses.FrozenInstanceError):
        context().cluster_key = "x"  # type: ignore[misc]


def test_service_info_from_service() -> None:
    """ServiceInfo reads name, namespace, ClusterIP and ports from a Service object."""
    svc = {
        "metadata": {"name": "web", "namespace": SUPER_NS},
        "spec": {"clusterIP": "10.96.0.20", "ports": [{"port": 80, "name": "http"}, {"port": 53, "protocol": "UDP"}]},
    }
    assert ServiceInfo("web", SUPER_NS, "10.96.0.20", (ServicePort(80, "http"), ServicePort(53, "", "UDP"))) == (
        ServiceInfo.from_service(svc)
    )


VAULT = {"name": "vault", "projected": {"defaultMode": 0o440, "sources": [
    {"configMap": {"name": "settings"}},
    {"serviceAccountToken": {"audience": "vault", "expirationSeconds": 900, "path": "vault-token"}},
]}}


def test_token_projections_get_keys_of_the_token_secret() -> None:
    """Each serviceAccountToken projection outside the automatic volume is listed with its
    audience and expiry, and the super Pod reads it from that key of the token Secret."""
    tenant = {"spec": {"volumes": [KUBE_API_ACCESS, VAULT,
                                   _projected("plain", {"serviceAccountToken": {"path": "t"}})]}}
    assert mutation.token_projections(tenant) == [
        mutation.TokenProjection(key="projected.vault.1", audience="vault", expiration_seconds=900),
        mutation.TokenProjection(key="projected.plain.0", audience=None, expiration_seconds=3600),
    ]
    pod = mutation.mutate_pod(super_pod(volumes=[KUBE_API_ACCESS, VAULT]),
                              context(token_volume=TokenVolume("web-vctoken-1")))
    vault = pod["spec"]["volumes"][1]
    assert vault == {"name": "vault", "projected": {"defaultMode": 0o440, "sources": [
        {"configMap": {"name": "settings"}},
        {"secret": {"name": "web-vctoken-1", "items": [{"key": "projected.vault.1", "path": "vault-token"}]}},
    ]}}


def test_a_token_projection_is_never_left_to_the_super_kubelet() -> None:
    """Without a tenant token Secret, a Pod that projects a token is not created (retry later):
    the super kubelet would fill the projection with a token of the super cluster."""
    with pytest.raises(mutation.TokenNotReady, match="vault"):
        mutation.mutate_pod(super_pod(volumes=[VAULT]), context())
