"""Keys on disk are private and never logged; the appliance runs under its least-privilege role.

The real `vc-appliance` process runs at DEBUG level with the super kubeconfig of
`appliance_identity` (a TokenRequest token bound only to configs/rbac.yaml), provisions a
process-mode VirtualCluster, syncs a Pod with a service-account token to the super cluster,
serves its logs through the proxy, and deletes the VirtualCluster again. Then: every file in
the data directory that holds a private key is 0600 in 0700 directories, and neither the
appliance's log nor any child log holds a PEM key, a key's base64 body, the appliance's own
token or the tenant tokens the Pod got. A `Forbidden` from the super cluster in the log means
the role misses a permission and fails the test as well.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import re
import stat
import uuid
from pathlib import Path

import pytest
import trio

from appliance import config
from appliance.controlplane import process
from tests.e2e.appliance_proc import running
from tests.security.conftest import RoleIdentity
from tests.tally import Tally
from tests.testbed import SuperCluster, append_pod_log, run_kubectl, tenancy_manifests, wait_for

pytestmark = [pytest.mark.security, pytest.mark.integration, pytest.mark.e2e]

POD = """
apiVersion: v1
kind: Pod
metadata: {name: keyed, namespace: default}
spec:
  containers: [{name: main, image: busybox}]
"""

_PEM_KEY = re.compile(rb"-----BEGIN [A-Z ]*PRIVATE KEY-----\r?\n(.+?)\r?\n-----END", re.S)
_KEY_DATA = re.compile(rb"client-key-data: *([A-Za-z0-9+/=]+)")
_SECRET_MARKERS = (b"PRIVATE KEY", b"client-key-data", b"BEGIN RSA")
_LOGGED_MARKERS = (b"PRIVATE KEY", b"BEGIN RSA", b"BEGIN EC", b"client-key-data")


def key_fragments(blob: bytes) -> set[bytes]:
    """Strings that reveal the private keys in `blob` (PEM, or kubeconfig `client-key-data`) if
    found in a log: key-specific slices of each key's base64 body and of its PEM's base64 (the
    form kubeconfigs and Secrets carry). The first body line is the same for every P-256 key."""
    out: set[bytes] = set()
    for embedded in _KEY_DATA.findall(blob):
        out |= key_fragments(base64.b64decode(embedded))
    for match in _PEM_KEY.finditer(blob):
        lines = match.group(1).split(b"\n")
        out.add(lines[1].strip()[:40] if len(lines) > 1 else lines[0].strip()[-40:])
        encoded = base64.b64encode(match.group(0))
        middle = len(encoded) // 2
        out.add(encoded[middle - 20:middle + 20])
    return out


def private_files(root: Path) -> list[Path]:
    """Files under `root` that hold key material (PEM keys or kubeconfigs with embedded keys)."""
    found = []
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            if any(m in data for m in _SECRET_MARKERS):
                found.append(path)
    return found


def loose_modes(root: Path, files: list[Path]) -> list[str]:
    """Key files readable beyond their owner, or directories above them open to others."""
    problems = []
    for path in files:
        if stat.S_IMODE(path.stat().st_mode) & 0o077:
            problems.append(f"{path}: {oct(stat.S_IMODE(path.stat().st_mode))}")
        for parent in [path.parent, *path.parent.parents]:
            if not parent.is_relative_to(root):
                break
            if stat.S_IMODE(parent.stat().st_mode) & 0o077:
                problems.append(f"{parent}/: {oct(stat.S_IMODE(parent.stat().st_mode))}")
    return sorted(set(problems))


@dataclasses.dataclass
class Scan:
    """What the log scan saw: lines read, lines holding a secret, Forbidden answers logged."""

    files: int = 0
    lines: int = 0
    hits: list[str] = dataclasses.field(default_factory=list)
    forbidden: list[str] = dataclasses.field(default_factory=list)

    def read(self, path: Path, secrets: set[bytes]) -> None:
        self.files += 1
        for number, line in enumerate(path.read_bytes().splitlines(), 1):
            self.lines += 1
            if any(m in line for m in _LOGGED_MARKERS) or any(s in line for s in secrets):
                self.hits.append(f"{path.name}:{number}")
            if b"forbidden" in line.lower() and b"appliance." in line:
                self.forbidden.append(line.decode(errors="replace")[:300])


def child_logs(data_dir: Path) -> list[Path]:
    return sorted(p for p in data_dir.rglob("*.log") if p.is_file())


async def test_keys_are_private_and_never_logged(
    tmp_path: Path, super_cluster: SuperCluster, appliance_identity: RoleIdentity, tally: Tally
) -> None:
    """A full tenant lifecycle under the least-privilege role leaves only 0600 key files in 0700
    directories and no key, key body or token in any log."""
    sc, run = super_cluster, uuid.uuid4().hex[:8]
    ns, cv = f"sec-{run}", f"cv-sec-{run}"
    data_dir = tmp_path / "data"
    env = {"VCA_SUPER_KUBECONFIG": str(appliance_identity.kubeconfig), "VCA_LOG_LEVEL": "DEBUG",
           "VCA_SYNCER_EXTRA_RESOURCES": '["ingress", "priorityclass"]'}  # the role covers opt-in kinds too
    scan = Scan()
    try:
        with trio.fail_after(240):
            async with running(sc, tmp_path, extra=f'tenant-selector = "e2e={run}"\n', env=env,
                               data_dir=data_dir) as app:
                checked, modes, secrets = await _lifecycle(sc, tmp_path, run=run, ns=ns, cv=cv, data_dir=data_dir,
                                                           scan=scan)
                used = config.load(app.config, env=env).super.kubeconfig
                assert str(appliance_identity.kubeconfig) == used  # not the admin kubeconfig
                assert await app.stop() == 0
            secrets.add(appliance_identity.token.encode())
            for path in [app.log, *child_logs(data_dir)]:  # the tenant's went with its directory
                scan.read(path, secrets)
    finally:  # kept processes (the shared etcd) outlive the appliance by design: stop them here
        for d in {p.parent for p in data_dir.rglob("*.pid")}:
            process.kill_leftovers(d)

    tally.add("disk: files holding private keys (checked / 0600 in 0700 dirs)", tried=checked,
              held=checked - len(modes))
    assert [] == modes
    assert len(secrets) > 10  # the keys of a tenant PKI, its tokens and ours
    tally.add("logs: lines scanned for keys and tokens (scanned / clean)", tried=scan.lines,
              held=scan.lines - len(scan.hits))
    tally.add("logs: key and token strings searched for", tried=len(secrets), held=len(secrets))
    assert [] == scan.hits
    assert [] == scan.forbidden, "the vc-appliance ClusterRole misses a permission"
    assert scan.files >= 4 and scan.lines > 1000  # the appliance, etcd and the tenant's apiserver and KCM


async def _lifecycle(sc: SuperCluster, tmp: Path, *, run: str, ns: str, cv: str,
                     data_dir: Path, scan: Scan) -> tuple[int, list[str], set[bytes]]:
    """VC Running → Pod with a tenant token synced and Running → logs through the proxy → key files
    checked and the tenant's logs scanned → VC deleted. Returns how many key files there were,
    their mode problems, and the token and key strings a log must not contain."""
    kubectl, admin = sc.kubectl, sc.kubeconfig
    await run_kubectl(kubectl, admin, "create", "namespace", ns)
    await run_kubectl(kubectl, admin, "apply", "-f", "-", stdin=tenancy_manifests(
        cv=cv, name="vault", namespace=ns, labels={"e2e": run}))

    async def phase() -> str | None:
        out = await run_kubectl(kubectl, admin, "get", "vc", "vault", "-n", ns, "-o", "json")
        status = json.loads(out.stdout).get("status", {})
        assert status.get("phase") != "Error", status
        return status.get("clusterNamespace") if status.get("phase") == "Running" else None

    key = str(await wait_for(phase, timeout=120, what="VirtualCluster Running"))
    tkc = tmp / "tenant.kubeconfig"
    secret = await run_kubectl(kubectl, admin, "get", "secret", "admin-kubeconfig", "-n", key,
                               "-o", "jsonpath={.data.admin-kubeconfig}")
    tkc.write_bytes(base64.b64decode(secret.stdout))
    await run_kubectl(kubectl, tkc, "apply", "-f", "-", stdin=POD.encode())

    async def pod_running() -> bool:
        out = await run_kubectl(kubectl, tkc, "get", "pod", "keyed", "-o", "json", check=False)
        pod = json.loads(out.stdout) if out.returncode == 0 else {}
        return pod.get("status", {}).get("phase") == "Running" and bool(pod["spec"].get("nodeName"))

    await wait_for(pod_running, timeout=120, what="tenant pod Running")
    marker = uuid.uuid4().hex
    append_pod_log(sc.kwok_log, marker)
    assert marker in (await run_kubectl(kubectl, tkc, "logs", "keyed")).stdout

    found: set[bytes] = set()
    super_secrets = json.loads((await run_kubectl(kubectl, admin, "get", "secrets", "-n", f"{key}-default",
                                                  "-o", "json")).stdout)["items"]
    tokens = [base64.b64decode(s["data"]["token"]) for s in super_secrets if "token" in (s.get("data") or {})]
    assert tokens, "the synced Pod got no tenant token secret in the super cluster"
    found.update(tokens)
    root_secrets = json.loads((await run_kubectl(kubectl, admin, "get", "secrets", "-n", key, "-o", "json")).stdout)
    for secret in root_secrets["items"]:
        for value in (secret.get("data") or {}).values():
            found |= key_fragments(base64.b64decode(value))
    key_files = private_files(data_dir)  # checked now: deleting the VC removes its directory
    assert any(key in str(p) for p in key_files), "no key files of the tenant in the data directory"
    for path in key_files:
        fragments = key_fragments(path.read_bytes())
        # each form is 40 characters, and one of them is the form this very file holds
        assert {40} == {len(f) for f in fragments} and any(f in path.read_bytes() for f in fragments), path
        found |= fragments
    modes = loose_modes(data_dir, key_files)
    tenant_logs = [p for p in child_logs(data_dir) if key in str(p)]
    assert tenant_logs, "no logs of the tenant's control plane"
    for path in tenant_logs:
        scan.read(path, found)

    await run_kubectl(kubectl, admin, "delete", "vc", "vault", "-n", ns, "--timeout=120s")
    await run_kubectl(kubectl, admin, "delete", "namespace", ns, "--wait=false")
    await run_kubectl(kubectl, admin, "delete", "clusterversion", cv)
    return len(key_files), modes, found
