"""The pure parts of the image build: podman's containers.conf for this host."""

from __future__ import annotations

import resource
import tomllib

from appliance.controlplane.containerimage import containers_conf


def test_ulimits_follow_the_host_and_never_exceed_what_conmon_allows() -> None:
    conf = tomllib.loads(containers_conf((20000, 20000), (96367, 96367)))
    assert conf["containers"]["default_ulimits"] == ["nofile=20000:20000", "nproc=32768:32768"]
    assert conf["engine"] == {"runtime": "runc", "cgroup_manager": "cgroupfs", "events_logger": "file"}


def test_unlimited_host_limits_get_a_finite_value() -> None:
    inf = resource.RLIM_INFINITY
    conf = tomllib.loads(containers_conf((1024, inf), (100, inf)))
    assert conf["containers"]["default_ulimits"] == ["nofile=1048576:1048576", "nproc=32768:32768"]
