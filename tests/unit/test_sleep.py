"""Sleep and wake: the annotations, what counts as use, and reading the audit log."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from appliance.manager import sleep
from appliance.manager.provision import process as provision


@pytest.mark.parametrize(("value", "wanted"), [("true", True), ("True", True), ("false", False), ("", False)])
def test_sleep_annotation(value: str, wanted: bool) -> None:
    assert sleep.wants_sleep({sleep.ANNOTATION_SLEEP: value}) is wanted
    assert sleep.wants_sleep({}) is False


def test_bad_annotations_are_refused_with_their_name() -> None:
    with pytest.raises(sleep.Invalid, match=r"tenancy\.x-k8s\.io/sleep"):
        sleep.wants_sleep({sleep.ANNOTATION_SLEEP: "yes please"})
    for bad in ("30", "5 m", "10s", "29s", "-1m", "1d"):
        with pytest.raises(sleep.Invalid, match="sleep-after"):
            sleep.idle_limit({sleep.ANNOTATION_SLEEP_AFTER: bad})


def test_idle_limit_units() -> None:
    assert sleep.idle_limit({}) is None
    assert sleep.idle_limit({sleep.ANNOTATION_SLEEP_AFTER: "90s"}) == 90
    assert sleep.idle_limit({sleep.ANNOTATION_SLEEP_AFTER: "30m"}) == 1800
    assert sleep.idle_limit({sleep.ANNOTATION_SLEEP_AFTER: "2h"}) == 7200


def _event(user: str, agent: str = "kubectl/v1.36", groups: tuple[str, ...] = ()) -> dict[str, object]:
    return {"user": {"username": user, "groups": list(groups)}, "userAgent": agent}


@pytest.mark.parametrize(("event", "use"), [
    (_event("admin", groups=("system:masters",)), True),
    (_event("admin", agent="vc-syncer/ns-1-vc"), False),
    (_event("system:serviceaccount:shop:default", groups=("system:serviceaccounts:shop",)), True),
    (_event("system:serviceaccount:kube-system:replicaset-controller",
            groups=("system:serviceaccounts:kube-system",)), False),
    (_event("system:kube-controller-manager"), False),
    (_event("system:apiserver"), False),
])
def test_what_counts_as_use(event: dict[str, object], use: bool) -> None:
    assert sleep.counts_as_use(event) is use


def test_audit_scan_reads_only_new_complete_lines_and_follows_rotation(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    assert provision._scan_audit(log, None) == (False, None)
    log.write_text(json.dumps(_event("admin", agent="vc-syncer/x")) + "\n")
    used, cursor = provision._scan_audit(log, None)
    assert not used and cursor is not None and cursor[1] == log.stat().st_size
    with log.open("a") as f:
        f.write(json.dumps(_event("admin")) + "\n" + '{"user": {"username": "adm')  # a line being written
    used, cursor2 = provision._scan_audit(log, cursor)
    assert used and cursor2 is not None and cursor2[1] < log.stat().st_size
    assert provision._scan_audit(log, cursor2)[0] is False  # the partial line is not a request yet
    log.unlink()
    log.write_text(json.dumps(_event("admin")) + "\n")  # rotated: a new file
    assert provision._scan_audit(log, cursor2)[0] is True
