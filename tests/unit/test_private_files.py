"""`util.private`: every key, kubeconfig and plan file is written 0600, atomically, in a 0700 directory."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from appliance.util import private

PACKAGE_DIR = Path(__file__).resolve().parents[2] / "appliance"
#: the helper itself, and kube/creds.py's transient PEM files (kube/ imports nothing of ours)
MAY_SET_FILE_MODES = {"util/private.py", "kube/creds.py"}


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_new_file_is_private_in_a_new_private_directory(tmp_path: Path) -> None:
    """A missing parent is created 0700 and the file is 0600 with exactly the data."""
    path = tmp_path / "tenant" / "pki" / "ca.key"
    private.write_file(path, b"key")
    assert b"key" == path.read_bytes()
    assert 0o600 == mode(path)
    assert 0o700 == mode(path.parent)


def test_text_is_written_as_utf8(tmp_path: Path) -> None:
    """str data is encoded as UTF-8 (kubeconfigs, JSON plans)."""
    path = tmp_path / "plan.json"
    private.write_file(path, '{"name": "é"}')
    assert '{"name": "é"}'.encode() == path.read_bytes()


def test_replacing_tightens_mode_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    """An existing readable file is replaced by a 0600 one; nothing else stays in the directory."""
    path = tmp_path / "admin.kubeconfig"
    path.write_bytes(b"old")
    path.chmod(0o644)
    private.write_file(path, b"new")
    assert b"new" == path.read_bytes()
    assert 0o600 == mode(path)
    assert [path] == list(tmp_path.iterdir())


def test_existing_parent_is_left_as_it_is(tmp_path: Path) -> None:
    """Only directories the writer creates are made 0700; a caller's existing one keeps its mode."""
    tmp_path.chmod(0o755)
    private.write_file(tmp_path / "super.kubeconfig", b"x")
    assert 0o755 == mode(tmp_path)


def test_a_failed_write_keeps_the_old_content(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A write that fails before the rename leaves the old file whole and removes its temporary file."""
    path = tmp_path / "ca.key"
    private.write_file(path, b"old")

    def broken_fsync(fd: int) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="disk full"):
        private.write_file(path, b"new")
    assert b"old" == path.read_bytes()
    assert [path] == list(tmp_path.iterdir())


def test_a_symlink_is_replaced_not_followed(tmp_path: Path) -> None:
    """Writing through a planted symlink must not overwrite the file it points at."""
    target = tmp_path / "elsewhere"
    target.write_bytes(b"untouched")
    link = tmp_path / "tls.key"
    link.symlink_to(target)
    private.write_file(link, b"key")
    assert b"untouched" == target.read_bytes()
    assert not link.is_symlink() and b"key" == link.read_bytes()


def test_no_other_module_sets_file_modes() -> None:
    """Private files are written through `util.private` only, so the policy has one place."""
    offenders = {
        str(path.relative_to(PACKAGE_DIR))
        for path in PACKAGE_DIR.rglob("*.py")
        if any(word in path.read_text() for word in ("0o600", "O_CREAT", "chmod("))
    }
    assert set() == offenders - MAY_SET_FILE_MODES


def test_make_dir_tightens_an_existing_directory(tmp_path: Path) -> None:
    """A directory the caller owns becomes 0700 even when it already existed with a wider mode."""
    d = tmp_path / "data" / "tenant"
    d.mkdir(parents=True, mode=0o755)
    d.chmod(0o755)
    assert d == private.make_dir(d)
    assert 0o700 == mode(d)
