"""The real node's rendered configuration and locally built images (pure parts, no node)."""

from __future__ import annotations

import hashlib
import ipaddress
import json
import tarfile
import tomllib
from pathlib import Path

import pytest

from appliance.controlplane import addons, images, nodeconfig


def plan(tmp_path: Path, index: int = 7) -> nodeconfig.NodePlan:
    return nodeconfig.NodePlan(index=index, name=f"real-node-{index}", state_dir=tmp_path)


def test_plans_of_different_indexes_share_no_address_link_or_cgroup(tmp_path: Path) -> None:
    """Two test beds on one host get disjoint networks, links and cgroup roots from their index."""
    a, b = plan(tmp_path, 1), plan(tmp_path, 2)
    assert {a.host_ip, a.node_ip} == {"10.213.1.1", "10.213.1.2"}
    for attr in ("host_ip", "node_ip", "pod_cidr", "transit_cidr", "host_link", "cgroup_root", "service_cidr",
                 "tenant_service_pool", "routed_service_range"):
        assert getattr(a, attr) != getattr(b, attr)
    last = plan(tmp_path, nodeconfig.MAX_INDEX)
    assert len(last.host_link) <= 15  # IFNAMSIZ - 1
    assert ipaddress.ip_address(last.cluster_dns_ip) in ipaddress.ip_network(last.service_cidr)
    for other in ("10.88.0.0/16", "10.213.0.0/16"):  # Pod and transit networks of every index
        assert not ipaddress.ip_network(last.routed_service_range).overlaps(ipaddress.ip_network(other))
    routed = ipaddress.ip_network(last.routed_service_range)
    own, pool = ipaddress.ip_network(last.service_cidr), ipaddress.ip_network(last.tenant_service_pool)
    assert own.subnet_of(routed) and pool.subnet_of(routed) and not own.overlaps(pool)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="outside"):
        plan(tmp_path, 0)


def test_containerd_config_keeps_every_path_private_and_never_lowers_oom_score(tmp_path: Path) -> None:
    """The containerd config parses as TOML, keeps its state under the node's directory,
    restricts oom_score_adj (no CAP_SYS_RESOURCE here) and pins the local sandbox image."""
    p = plan(tmp_path)
    doc = tomllib.loads(nodeconfig.containerd_config(
        p, sandbox_image=images.PAUSE_IMAGE, runc=Path("/usr/sbin/runc"), cni_bin_dir=Path("/usr/lib/cni")))
    assert doc["version"] == 3
    for key in ("root", "state"):
        assert Path(doc[key]).is_relative_to(tmp_path)
    assert Path(doc["grpc"]["address"]) == p.containerd_socket
    runtime = doc["plugins"]["io.containerd.cri.v1.runtime"]
    assert runtime["restrict_oom_score_adj"] is True
    assert runtime["cni"]["conf_dir"] == str(p.cni_conf_dir)
    runc = runtime["containerd"]["runtimes"]["runc"]["options"]
    assert runc == {"BinaryName": "/usr/sbin/runc", "SystemdCgroup": False}
    assert doc["plugins"]["io.containerd.cri.v1.images"]["pinned_images"]["sandbox"] == images.PAUSE_IMAGE


def test_kubelet_config_fits_a_cgroup_v1_host_without_cap_sys_resource(tmp_path: Path) -> None:
    """The kubelet config accepts cgroup v1, uses cgroupfs, never asks for a negative OOM
    score, serves on the node address with webhook auth, and registers the given taints."""
    p = plan(tmp_path)
    taint = nodeconfig.REAL_NODE_TAINT
    cfg = nodeconfig.kubelet_config(p, client_ca=tmp_path / "ca.crt", serving_cert=tmp_path / "k.crt",
                                    serving_key=tmp_path / "k.key", max_open_files=20000, taints=(taint,))
    assert cfg["failCgroupV1"] is False
    assert cfg["cgroupDriver"] == "cgroupfs"
    assert cfg["cgroupRoot"] == p.cgroup_root
    assert cfg["oomScoreAdj"] == 0
    assert cfg["maxOpenFiles"] == 20000
    assert cfg["address"] == p.node_ip
    assert cfg["authentication"]["anonymous"]["enabled"] is False
    assert cfg["authorization"]["mode"] == "Webhook"
    assert cfg["containerRuntimeEndpoint"] == f"unix://{p.containerd_socket}"
    assert cfg["registerWithTaints"] == [taint]
    assert json.loads(nodeconfig.render_json(cfg)) == cfg
    argv = nodeconfig.kubelet_argv(Path("/bin/kubelet"), p, config=tmp_path / "c", kubeconfig=tmp_path / "k")
    assert f"--node-ip={p.node_ip}" in argv
    assert f"--hostname-override={p.name}" in argv


def test_cni_and_kube_proxy_stay_on_the_nodes_own_networks(tmp_path: Path) -> None:
    """CNI hands out the node's Pod range; kube-proxy treats it as local and leaves the
    VM-wide conntrack settings alone."""
    p = plan(tmp_path)
    cni = nodeconfig.cni_conflist(p)
    bridge = cni["plugins"][0]
    assert bridge["ipam"]["ranges"] == [[{"subnet": p.pod_cidr}]]
    assert Path(bridge["ipam"]["dataDir"]).is_relative_to(tmp_path)
    proxy = nodeconfig.kube_proxy_config(p, kubeconfig=tmp_path / "kp")
    assert proxy["clusterCIDR"] == p.pod_cidr
    assert proxy["conntrack"]["maxPerCore"] == 0
    assert proxy["nodePortAddresses"] == [f"{p.node_ip}/32"]


def _members(tar: tarfile.TarFile) -> dict[str, bytes]:
    out = {}
    for m in tar.getmembers():
        f = tar.extractfile(m)
        if f is not None:
            out[m.name] = f.read()
    return out


def test_image_archive_is_an_oci_layout_whose_digests_match_and_is_deterministic(tmp_path: Path) -> None:
    """The archive names each image by annotation, every blob matches its digest, shared
    entries make one layer, and the same input gives byte-identical output."""
    tool = tmp_path / "tool"
    tool.write_bytes(b"#!/bin/sh\necho hi\n")
    base = (images.Entry("bin"), images.Entry("bin/tool", source=tool),
            images.Entry("bin/alias", link="tool"), images.Entry("etc/motd", data=b"hello\n", mode=0o644))
    imgs = [images.Image("localhost/a:1", base, cmd=("tool",)),
            images.Image("localhost/b:2", base, entrypoint=("/bin/tool",))]
    first, second = tmp_path / "one.tar", tmp_path / "two.tar"
    digests = images.write_archive(imgs, first)
    images.write_archive(imgs, second)
    assert first.read_bytes() == second.read_bytes()

    with tarfile.open(first) as tar:
        files = _members(tar)
    index = json.loads(files["index.json"])
    names = {m["annotations"]["io.containerd.image.name"]: m["digest"] for m in index["manifests"]}
    assert names == digests
    for name, blob in files.items():
        if name.startswith("blobs/sha256/"):
            assert hashlib.sha256(blob).hexdigest() == name.rsplit("/", 1)[1]
    layers = {json.loads(files[f"blobs/sha256/{d.split(':')[1]}"])["layers"][0]["digest"] for d in digests.values()}
    assert len(layers) == 1
    layer = files[f"blobs/sha256/{layers.pop().split(':')[1]}"]
    with tarfile.open(fileobj=__import__("io").BytesIO(layer)) as inner:
        content = {m.name: m for m in inner.getmembers()}
        assert content["bin/alias"].issym() and content["bin/alias"].linkname == "tool"
        assert content["bin/tool"].mode == 0o755 and content["bin/tool"].mtime == 0
        assert inner.extractfile("etc/motd").read() == b"hello\n"  # type: ignore[union-attr]
    docker = json.loads(files["manifest.json"])
    assert [d["RepoTags"] for d in docker] == [["localhost/a:1"], ["localhost/b:2"]]


def test_standard_images_use_pinned_tags_that_never_trigger_a_pull(tmp_path: Path) -> None:
    """Every image the node imports has an explicit, non-latest tag under localhost/."""
    binary = tmp_path / "k8s-testbin"
    binary.write_bytes(b"\0")
    imgs = images.standard_images(testbin=binary, applets=("kubectl",), coredns=None)
    for img in imgs:
        assert img.name.startswith("localhost/")
        assert not img.name.endswith(":latest") and ":" in img.name
    kube = next(i for i in imgs if i.name == images.KUBERNETES_IMAGE)
    assert images.Entry("usr/local/bin/kubectl", link="k8s-testbin") in kube.entries


def test_the_tenant_dns_sample_is_what_the_test_bed_renders() -> None:
    """The CoreDNS sample a tenant applies is exactly the rendering the real-node tests use."""
    sample = Path(__file__).resolve().parents[2] / "configs" / "samples" / "tenant-coredns.yaml"
    text = "\n".join(line for line in sample.read_text().splitlines() if not line.startswith("#"))
    assert [json.loads(doc) for doc in text.split("\n---\n")] == addons.coredns_objects(tenant=True)
    corefile = addons.coredns_objects(tenant=True)[3]["data"]["Corefile"]
    assert corefile.index("tenantip") < corefile.index("kubernetes cluster.local")


def test_every_unix_socket_of_the_node_has_a_short_path(tmp_path: Path) -> None:
    """containerd's and the kubelet's sockets live inside the node's own namespace under short
    fixed paths, however deep the state directory is (a Unix socket path has at most 107 bytes)."""
    deep = plan(tmp_path / ("d" * 200))
    assert len(str(deep.containerd_socket)) < 60
    argv = nodeconfig.kubelet_argv(Path("/bin/kubelet"), deep, config=tmp_path / "c", kubeconfig=tmp_path / "k")
    root = next(a.split("=", 1)[1] for a in argv if a.startswith("--root-dir="))
    assert len(root + "/pod-resources/kubelet.sock") < 107
