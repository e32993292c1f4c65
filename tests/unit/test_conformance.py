"""The conformance run's pure parts: image names from upstream's manifest, the images made from
them, multi-layer archives, the phases' command lines and the JUnit summary."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from appliance.controlplane import build, e2eimages, images
from bench import conformance

MANIFEST = '''
var (
	initRegistry = RegistryList{
		PromoterE2eRegistry:      "registry.k8s.io/e2e-test-images",
		BuildImageRegistry:       "registry.k8s.io/build-image",
		InvalidRegistry:          "invalid.registry.k8s.io/invalid",
		GcRegistry:               "registry.k8s.io",
		PrivateRegistry:          "gcr.io/k8s-authenticated-test",
	}
)

func initImageConfigs(list RegistryList) (map[ImageID]Config, map[ImageID]Config) {
	configs := map[ImageID]Config{}
	configs[AgnhostPrev] = Config{list.PromoterE2eRegistry, "agnhost", "2.55"}
	configs[Agnhost] = Config{list.PromoterE2eRegistry, "agnhost", "2.66.1"}
	configs[AgnhostPrivate] = Config{list.PrivateRegistry, "agnhost", "2.6"}
	configs[BusyBox] = Config{list.PromoterE2eRegistry, "busybox", "1.37.0-2"}
	configs[InvalidRegistryImage] = Config{list.InvalidRegistry, "alpine", "3.1"}
	configs[Nautilus] = Config{list.PromoterE2eRegistry, "nautilus", "1.8"}
	configs[Nginx] = Config{list.PromoterE2eRegistry, "nginx", "1.27.0-2"}
	configs[Nonewprivs] = Config{list.PromoterE2eRegistry, "nonewprivs", "1.4"}
	configs[Pause] = Config{list.GcRegistry, "pause", "3.10.2"}
	configs[BrandNew] = Config{list.PromoterE2eRegistry, "brand-new", "0.1"}
'''


def test_manifest_names_are_the_registry_of_each_config_plus_name_and_version() -> None:
    """Each `configs[ID] = Config{list.R, name, version}` line becomes R's default registry/name:version."""
    names = e2eimages.parse_manifest(MANIFEST)
    assert names["Agnhost"] == "registry.k8s.io/e2e-test-images/agnhost:2.66.1"
    assert names["AgnhostPrev"] == "registry.k8s.io/e2e-test-images/agnhost:2.55"
    assert names["Pause"] == "registry.k8s.io/pause:3.10.2"
    assert names["AgnhostPrivate"] == "gcr.io/k8s-authenticated-test/agnhost:2.6"
    assert len(names) == 10


@pytest.mark.parametrize(
    "source",
    [
        pytest.param("configs[Agnhost] = Config{list.PromoterE2eRegistry, \"agnhost\", \"1\"}", id="no-registries"),
        pytest.param("initRegistry = RegistryList{\n GcRegistry: \"registry.k8s.io\",\n}\n", id="no-configs"),
        pytest.param("initRegistry = RegistryList{\n GcRegistry: \"r\",\n}\n"
                     "configs[X] = Config{list.OtherRegistry, \"x\", \"1\"}", id="unknown-registry"),
    ],
)
def test_a_manifest_that_does_not_parse_is_an_error(source: str) -> None:
    """A manifest without registries, without configs or naming an unknown registry is refused."""
    with pytest.raises(e2eimages.ImageBuildError):
        e2eimages.parse_manifest(source)


def test_plan_builds_the_known_images_and_explains_every_other_one() -> None:
    """Images that tests must fail to pull are not built, and an ID this code does not know yet
    is reported as not built rather than silently dropped."""
    built, skipped = e2eimages.plan(e2eimages.parse_manifest(MANIFEST))
    assert set(built) == {"Agnhost", "AgnhostPrev", "BusyBox", "Nautilus", "Nginx", "Nonewprivs", "Pause"}
    assert set(skipped) == {"AgnhostPrivate", "InvalidRegistryImage", "BrandNew"}
    assert "pull to fail" in skipped["AgnhostPrivate"]
    assert "no recipe" in skipped["BrandNew"]
    assert set(e2eimages.RECIPES).isdisjoint(e2eimages.NOT_BUILT)


def test_merge_lets_a_later_group_replace_a_path() -> None:
    """Debian's files replace busybox applet links of the same path; other paths are kept, sorted."""
    merged = e2eimages.merge(
        [images.Entry("bin"), images.Entry("bin/bash", link="busybox"), images.Entry("bin/sh", link="busybox")],
        [images.Entry("bin/bash", data=b"real bash")],
    )
    assert [e.path for e in merged] == ["bin", "bin/bash", "bin/sh"]
    assert merged[1].data == b"real bash"


def test_tree_entries_keep_modes_and_symlinks_and_prune_directories(tmp_path: Path) -> None:
    """An unpacked package tree becomes entries with its modes (setuid too) and links; pruned
    directories vanish with their contents."""
    (tmp_path / "usr" / "bin").mkdir(parents=True)
    (tmp_path / "usr" / "share" / "doc" / "pkg").mkdir(parents=True)
    tool = tmp_path / "usr" / "bin" / "tool"
    tool.write_text("x")
    tool.chmod(0o4755)
    (tmp_path / "usr" / "share" / "doc" / "pkg" / "README").write_text("doc")
    (tmp_path / "bin").symlink_to("usr/bin")
    entries = {e.path: e for e in e2eimages.tree_entries(tmp_path, prune=("usr/share/doc",))}
    assert entries["usr/bin/tool"].mode == 0o4755 and entries["usr/bin/tool"].source == tool
    assert entries["bin"].link == "usr/bin"
    assert not any(p.startswith("usr/share/doc") for p in entries)


def _sources(tmp_path: Path) -> e2eimages.Sources:
    conf_dir = tmp_path / "conformance"
    conf_dir.mkdir()
    for tool in ("agnhost", "nnp", "sample-apiserver"):
        (conf_dir / tool).write_bytes(tool.encode())
    module = tmp_path / "kubernetes"
    porter = module / "test" / "images" / "agnhost" / "porter"
    porter.mkdir(parents=True)
    for name in ("localhost.crt", "localhost.key"):
        (porter / name).write_text(name)
    for demo in ("nautilus", "kitten"):
        html = module / "test" / "images" / demo / "html"
        html.mkdir(parents=True)
        (html / "data.json").write_text(json.dumps({"image": f"{demo}.jpg"}))
        (html / f"{demo}.jpg").write_bytes(b"jpeg")
    debian = tmp_path / "debian"
    (debian / "usr" / "bin").mkdir(parents=True)
    (debian / "usr" / "bin" / "dig").write_text("dig")
    (debian / ".complete").write_text("")
    for name in ("testbin", "coredns"):
        (tmp_path / name).write_bytes(b"\0")
    return e2eimages.Sources(conformance=build.ConformanceBinaries(conf_dir), testbin=tmp_path / "testbin",
                             applets=("etcd", "kubectl"), coredns=tmp_path / "coredns", debian_root=debian,
                             kubernetes_module=module)


def test_images_carry_upstream_names_and_share_their_big_layers(tmp_path: Path) -> None:
    """Every built image is named as the manifest names it; agnhost's two tags and nautilus share
    the Debian userland layer, yet are distinct images (different configs)."""
    manifest = e2eimages.parse_manifest(MANIFEST)
    built = {img.name: img for img in e2eimages.build_images(manifest, _sources(tmp_path))}
    expected, _ = e2eimages.plan(manifest)
    assert set(built) == {manifest[i] for i in expected}
    agnhost, prev = built[manifest["Agnhost"]], built[manifest["AgnhostPrev"]]
    nautilus = built[manifest["Nautilus"]]
    assert agnhost.all_layers == prev.all_layers and agnhost.labels != prev.labels
    assert nautilus.entries == agnhost.entries
    assert {e.path for e in nautilus.layers[-1]} == {"data.json", "nautilus.jpg"}
    assert agnhost.entrypoint == ("/agnhost",) and nautilus.cmd == ("test-webserver",)
    userland = {e.path: e for e in agnhost.entries}
    assert userland["usr/bin/dig"].data is None and userland["bin/nc"].link == "nc.openbsd"
    # busybox's sh would run its own nc, not netcat-openbsd; dash would drop `data-1=...` from env
    assert userland["bin/sh"].link == "bash"
    assert built[manifest["BusyBox"]].entries == agnhost.entries
    assert "user-defined-in-image:x:1000" in (userland["etc/passwd"].data or b"").decode()
    nnp = built[manifest["Nonewprivs"]].layers[0][0]
    assert (nnp.path, nnp.mode) == ("usr/local/bin/nnp", 0o4755)
    assert built[manifest["Pause"]].entrypoint == ("/pause",)
    assert built[manifest["Nginx"]].stop_signal == "SIGQUIT"


def test_multi_layer_images_list_their_layers_in_order_and_store_shared_ones_once(tmp_path: Path) -> None:
    """An image with extra layers has them after its base in the manifest and config, a base
    shared by two images is one blob, and the stop signal reaches the config."""
    base = (images.Entry("etc"), images.Entry("etc/motd", data=b"base\n", mode=0o644))
    top = (images.Entry("etc/motd", data=b"top\n", mode=0o644),)
    imgs = [images.Image("localhost/base:1", base),
            images.Image("localhost/top:1", base, layers=(top,), stop_signal="SIGQUIT")]
    out = tmp_path / "a.tar"
    digests = images.write_archive(imgs, out)
    with tarfile.open(out) as tar:
        blobs = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]
    manifests = {n: json.loads(blobs[f"blobs/sha256/{d.split(':')[1]}"]) for n, d in digests.items()}
    base_layers = [x["digest"] for x in manifests["localhost/base:1"]["layers"]]
    top_layers = [x["digest"] for x in manifests["localhost/top:1"]["layers"]]
    assert len(base_layers) == 1 and top_layers[0] == base_layers[0] and len(top_layers) == 2
    config = json.loads(blobs[f"blobs/sha256/{manifests['localhost/top:1']['config']['digest'].split(':')[1]}"])
    assert config["rootfs"]["diff_ids"] == top_layers
    assert config["config"]["StopSignal"] == "SIGQUIT"
    with tarfile.open(fileobj=io.BytesIO(blobs[f"blobs/sha256/{top_layers[1].split(':')[1]}"])) as layer:
        assert layer.extractfile("etc/motd").read() == b"top\n"  # type: ignore[union-attr]
    docker = {d["RepoTags"][0]: d["Layers"] for d in json.loads(blobs["manifest.json"])}
    assert len(docker["localhost/top:1"]) == 2


@pytest.mark.parametrize(
    ("text", "seconds"),
    [pytest.param("90m", 5400, id="minutes"), pytest.param("1h30m", 5400, id="hours-minutes"),
     pytest.param("45s", 45, id="seconds"), pytest.param("0.5h", 1800, id="fraction")],
)
def test_durations_read_like_go_durations(text: str, seconds: float) -> None:
    """--timeout takes what ginkgo's --timeout takes."""
    assert seconds == conformance.parse_duration(text)


@pytest.mark.parametrize("text", ["", "90", "1d", "5m junk"])
def test_durations_without_a_unit_or_with_junk_are_refused(text: str) -> None:
    """A duration ginkgo would not read is refused before anything starts."""
    with pytest.raises(ValueError, match="duration"):
        conformance.parse_duration(text)


def test_the_serial_phase_runs_alone_and_the_other_phase_skips_it() -> None:
    """Non-serial specs go through the ginkgo CLI over N processes with [Serial] skipped; serial
    specs run in e2e.test itself, selected by the Serial label; [Disruptive] is skipped in both."""
    common = {"e2e_test": Path("/c/e2e.test"), "ginkgo": Path("/c/ginkgo"), "focus": r"\[Conformance\]",
              "skip": "Flaky", "timeout": "2h", "flags": ["--kubeconfig=/k"]}
    parallel = conformance.phase_argv(name="parallel", serial=False, procs=3, **common)  # type: ignore[arg-type]
    assert parallel[:2] == ["/c/ginkgo", "--procs=3"]
    assert r"--skip=\[Disruptive\]|Flaky|\[Serial\]" in parallel
    assert parallel[parallel.index("/c/e2e.test") + 1:] == ["--", "--kubeconfig=/k"]
    serial = conformance.phase_argv(name="serial", serial=True, procs=3, **common)  # type: ignore[arg-type]
    assert serial[0] == "/c/e2e.test" and "--ginkgo.label-filter=Serial" in serial
    assert r"--ginkgo.skip=\[Disruptive\]|Flaky" in serial and serial[-1] == "--kubeconfig=/k"
    single = conformance.phase_argv(name="parallel", serial=False, procs=1, **common)  # type: ignore[arg-type]
    assert single[0] == "/c/e2e.test" and "--ginkgo.label-filter=Serial" not in single


def test_e2e_flags_pass_the_node_count_only_when_known() -> None:
    """--num-nodes is passed for a positive count and left to the suite otherwise."""
    kw = {"kubeconfig": Path("/k"), "report_dir": Path("/r"), "kubectl": Path("/bin/kubectl")}
    assert "--num-nodes=1" in conformance.e2e_flags(num_nodes=1, **kw)  # type: ignore[arg-type]
    assert not any(f.startswith("--num-nodes") for f in conformance.e2e_flags(num_nodes=0, **kw))  # type: ignore[arg-type]
    assert "--provider=skeleton" in conformance.e2e_flags(num_nodes=0, **kw)  # type: ignore[arg-type]


JUNIT = """<?xml version="1.0" encoding="UTF-8"?>
<testsuites tests="7" disabled="2" errors="0" failures="2" time="120">
  <testsuite name="Kubernetes e2e suite" tests="7" skipped="3" failures="2" time="120">
    <testcase name="[SynchronizedBeforeSuite]" classname="Kubernetes e2e suite" status="passed" time="1"></testcase>
    <testcase name="[It] [sig-node] Pods should be submitted and removed [Conformance]" status="passed" time="4"/>
    <testcase name="[It] [sig-network] DNS should provide DNS for the cluster [Conformance]" status="failed" time="600">
      <failure message="" type="failed">[FAILED] timed out waiting for the condition
Expected
    &lt;bool&gt;: false
to be true</failure>
    </testcase>
    <testcase name="[It] [sig-apps] Deployment should work [Conformance]" status="timedout" time="900">
      <failure message="[TIMEDOUT] A suite timeout occurred" type="timedout">long text</failure>
    </testcase>
    <testcase name="[It] [sig-node] Never selected" status="skipped" time="0"><skipped message="skipped"></skipped></testcase>
    <testcase name="[It] [sig-apps] Needs two nodes [Conformance]" status="skipped" time="0.1">
      <skipped message="skipped - Requires at least 2 nodes (not 1)"></skipped>
    </testcase>
    <testcase name="[ReportAfterSuite] Kubernetes e2e suite report" status="passed" time="0"></testcase>
    <testcase name="[SynchronizedAfterSuite]" status="failed" time="1">
      <failure message="cleanup failed" type="failed"></failure>
    </testcase>
  </testsuite>
</testsuites>
"""


def test_junit_counts_started_specs_and_keeps_each_failures_first_line() -> None:
    """Specs filtered out by focus are not counted, run-time skips are (with their reason), a
    failure keeps its first error line (from the text when the message attribute is empty), and
    a failed suite node is reported apart from the tests."""
    r = conformance.parse_junit(JUNIT, phase="parallel", wall_s=130)
    assert (r.ran, r.passed, r.failed, r.skipped) == (4, 1, 2, 1)
    assert r.failures == (
        conformance.Failure("[sig-network] DNS should provide DNS for the cluster [Conformance]",
                            "[FAILED] timed out waiting for the condition"),
        conformance.Failure("[sig-apps] Deployment should work [Conformance]", "[TIMEDOUT] A suite timeout occurred"),
    )
    assert r.skips == (conformance.Failure("[sig-apps] Needs two nodes [Conformance]",
                                           "Requires at least 2 nodes (not 1)"),)
    assert r.suite_failures == (conformance.Failure("[SynchronizedAfterSuite]", "cleanup failed"),)


def test_summary_has_the_phase_table_with_totals_and_the_failure_list() -> None:
    """The markdown shows run/passed/failed/skipped and wall time per phase and in total, and
    lists every failure with its first error line (pipes escaped so tables stay tables)."""
    parallel = conformance.parse_junit(JUNIT, phase="parallel", wall_s=3725)
    serial = conformance.PhaseResult("serial", ran=2, passed=2, wall_s=60)
    text = conformance.render_summary([parallel, serial], meta=[("focus", "a|b")])
    assert "| focus | a\\|b |" in text
    assert "| parallel | 4 | 1 | 2 | 1 | 1h02m05s |" in text
    assert "| serial | 2 | 2 | 0 | 0 | 1m00s |" in text
    assert "| **total** | **6** | **3** | **2** | **1** | **1h03m05s** |" in text
    assert "## Failures (2)" in text
    assert "| [sig-network] DNS should provide DNS for the cluster [Conformance] | parallel | " \
           "[FAILED] timed out waiting for the condition |" in text
    assert "Requires at least 2 nodes (not 1)" in text and "Suite set-up or tear-down" in text


def test_conformance_md_lists_the_ci_subset() -> None:
    """CONFORMANCE.md names exactly the tests the CI subset runs, in the same order."""
    from tests.realnode.test_conformance_subset import SUBSET

    text = (Path(__file__).resolve().parents[2] / "CONFORMANCE.md").read_text()
    section = text.split("## The subset in `make test`", 1)[1].split("\n## ", 1)[0]
    listed = tuple(line[3:-1] for line in section.splitlines() if line.startswith("- `"))
    assert listed == SUBSET
