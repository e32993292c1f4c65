"""Fixtures of the real-node suite: a super cluster whose only node is real, and appliances.

`real_bed` starts a local super cluster with `--real-node --nodes 0` (containerd, runc,
CNI, kubelet and kube-proxy in namespaces of their own; the super apiserver and every
tenant apiserver on the host end of the node's link, where Pods reach them). It lives for
this package only, so the kubelet's load never slows the kwok-based suites, and its
teardown must leave nothing behind: `test_teardown` checks that in a separate bed.

`appliance_super` and `appliance_kubelet` run the real `vc-appliance` process on that bed,
one per proxy upstream mode, each provisioning its own process-mode VirtualClusters
(`tenant-selector` keeps them apart). These are plain (sync) package fixtures: the
appliance and the local cluster are other processes, started once and stopped after the
package.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from appliance.controlplane import build, nodehost
from tests.conftest import local_cluster
from tests.realnode import nodebed
from tests.testbed import SuperCluster


@pytest.fixture(scope="package")
def node_bins() -> build.NodeBinaries:
    return build.ensure_node_binaries()


@pytest.fixture(scope="package")
def real_bed(
    testbed_bins: build.Binaries, node_bins: build.NodeBinaries, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SuperCluster]:
    """A super cluster with one real node (and no kwok nodes) for this package."""
    reason = nodehost.check_host()
    if reason is not None:
        pytest.fail(f"this host cannot run the real node: {reason}")
    state = tmp_path_factory.mktemp("realbed")
    reuse = os.environ.get("VC_REALBED_STATE")
    try:
        yield from local_cluster(
            testbed_bins, state, reuse=reuse,
            args=("--nodes", "0", "--real-node"), env={"VC_NODEBIN_DIR": str(node_bins.bin_dir)},
        )
        left = [] if reuse else nodehost.leftovers()  # what the bed's own stop did not remove
    finally:
        nodehost.reap_stale()  # only acts if the bed process died without cleaning up
    assert not left, f"stopping the real node left this behind: {left}"


@pytest.fixture(scope="package")
def appliance_super(real_bed: SuperCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[nodebed.NodeEnv]:
    """vc-appliance (proxy upstream: super apiserver) with two process-mode tenants."""
    with nodebed.appliance(real_bed, tmp_path_factory.mktemp("app-super"), upstream="super-apiserver",
                           tenants=("red", "blue")) as env:
        yield env


@pytest.fixture(scope="package")
def appliance_kubelet(real_bed: SuperCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[nodebed.NodeEnv]:
    """vc-appliance (proxy upstream: the node's kubelet) with one process-mode tenant."""
    with nodebed.appliance(real_bed, tmp_path_factory.mktemp("app-kubelet"), upstream="kubelet",
                           tenants=("green",)) as env:
        yield env


@pytest.fixture(params=["super-apiserver", "kubelet"])
def any_upstream(request: pytest.FixtureRequest) -> nodebed.NodeEnv:
    """Each proxy upstream mode in turn (for tests of logs, exec, attach, port-forward)."""
    name = "appliance_super" if request.param == "super-apiserver" else "appliance_kubelet"
    return request.getfixturevalue(name)  # type: ignore[no-any-return]

