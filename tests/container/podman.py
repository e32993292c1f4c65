"""podman for the container and systemd suites: images, containers that are always removed, exec.

Fixtures that outlive one test are sync (pytest-trio runs each test in its own `trio.run`), so
this module has a blocking half for them (`run`) and an async half for tests (`arun`).
"""

from __future__ import annotations

import contextlib
import hashlib
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import trio

from appliance.controlplane import containerimage

HERE = Path(__file__).resolve().parent
UNIT = containerimage.ROOT / "systemd" / "vc-appliance.service"


def run(*args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["podman", *args], env=containerimage.podman_env(), capture_output=True,
                          text=True, check=False, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"podman {' '.join(args[:3])} … failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return proc


async def arun(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[bytes]:
    with trio.fail_after(timeout):
        proc = await trio.run_process(["podman", *args], env=containerimage.podman_env(),
                                      capture_stdout=True, capture_stderr=True, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"podman {' '.join(args[:4])} … failed ({proc.returncode}): "
                             f"{proc.stderr.decode()[-2000:]}")
    return proc


@dataclass(frozen=True)
class Container:
    name: str

    async def sh(self, script: str, *, check: bool = True, timeout: float = 120) -> str:
        """Run a shell script inside (as root); returns its stdout."""
        done = await arun("exec", self.name, "sh", "-c", script, check=check, timeout=timeout)
        return done.stdout.decode()

    async def logs(self) -> str:
        done = await arun("logs", self.name, check=False)
        return (done.stdout + done.stderr).decode(errors="replace")

    async def state(self, field: str) -> str:
        done = await arun("inspect", "--format", f"{{{{.State.{field}}}}}", self.name)
        return done.stdout.decode().strip()


@contextlib.contextmanager
def removed_after(name: str) -> Iterator[Container]:
    """Yields a handle; the container of that name is force-removed afterwards, whatever happened."""
    run("rm", "--force", "--time", "0", name, check=False)
    try:
        yield Container(name)
    finally:
        run("rm", "--force", "--time", "0", name, check=False)


SYSTEMD_LAYER = """\
ARG APP
FROM ${APP}
USER root
RUN apt-get update \\
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends systemd systemd-sysv dbus procps \\
 && rm -rf /var/lib/apt/lists/* \\
 && systemctl mask systemd-udevd.service systemd-udevd-control.socket systemd-udevd-kernel.socket \\
      getty.target console-getty.service systemd-logind.service
COPY vc-appliance.service /etc/systemd/system/vc-appliance.service
COPY test-timing.conf /etc/systemd/system/vc-appliance.service.d/test-timing.conf
STOPSIGNAL SIGRTMIN+3
ENTRYPOINT ["/sbin/init"]
CMD []
"""

#: The one thing the suite changes, as a drop-in (the unit file itself is installed unchanged):
#: a watchdog short enough that a hang is noticed within the test's deadline.
TEST_TIMING = "[Service]\nWatchdogSec=10s\n"


def ensure_systemd_image(app_image: str) -> str:
    """The app image plus systemd and the repository's unit; rebuilt when either changes.

    The systemd packages come from the Debian mirror with `--network=host` (a test image only:
    the product image builds without any network).
    """
    name = f"{app_image}-systemd"
    app_id = run("image", "inspect", "--format", "{{.Id}}", app_image).stdout.strip()
    inputs = hashlib.sha256((app_id + SYSTEMD_LAYER + TEST_TIMING).encode() + UNIT.read_bytes()).hexdigest()[:16]
    if containerimage.image_label(name, containerimage.INPUTS_LABEL) == inputs:
        return name
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        ctx = Path(tmp)
        (ctx / "Containerfile").write_text(SYSTEMD_LAYER)
        (ctx / "vc-appliance.service").write_bytes(UNIT.read_bytes())
        (ctx / "test-timing.conf").write_text(TEST_TIMING)
        run("build", "--network=host", "--build-arg", f"APP={app_image}",
            "--label", f"{containerimage.INPUTS_LABEL}={inputs}", "-t", name, str(ctx), timeout=600)
    return name
