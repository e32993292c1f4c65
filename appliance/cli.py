"""The `vc-appliance` command.

    vc-appliance run [--config PATH]        run the appliance (manager, syncer, proxy, http)
    vc-appliance kubeconfig NS/NAME         print a tenant's admin kubeconfig
    vc-appliance status                     which replica holds which tenant (Leases)
    vc-appliance backup NS/NAME FILE        a process-mode tenant's etcd data and PKI into FILE (0600)
    vc-appliance restore NS/NAME FILE       re-create the tenant from FILE (--new: under another name)
    vc-appliance rotate-certs NS/NAME       renew a process-mode tenant's certificates now
    vc-appliance dev up|down|status         the embedded local default (see `dev --help`)
    vc-appliance version

`backup` and `restore` run on the appliance's host with its `--config` (they use its data dir).
`run`, `kubeconfig`, `status`, `backup`, `restore` and `rotate-certs` reach the super cluster as kubectl does: `--kubeconfig PATH`
and `--context NAME` first, then the config's `[super]` keys, then KUBECONFIG (files merged),
then ~/.kube/config, and the in-cluster service account only when none is given.

Exit codes: 0 success (including a clean stop on SIGTERM/SIGINT); 1 runtime failure;
2 bad usage, bad configuration (a kubeconfig that does not load, an unknown context, no
super cluster named at all) or a failed start (the message names the problem).
The config and the kubeconfig's location are settled before trio starts, so a wrong file
fails fast and clearly.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from appliance import __version__, config, logsetup

if TYPE_CHECKING:  # app is imported by the commands that need it: `dev` and `version` stay quick
    from appliance import app

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


def _load_config(path: Path | None) -> config.Config:
    try:
        return config.load(path)
    except config.ConfigError as exc:
        print(f"vc-appliance: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None


def _super_source(args: argparse.Namespace, cfg: config.Config) -> app.SuperSource:
    from appliance import app

    try:
        return app.super_source(cfg, kubeconfig=args.kubeconfig, context=args.context,
                                env=os.environ, home=Path.home())
    except app.StartupError as exc:
        print(f"vc-appliance: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None


def cmd_run(args: argparse.Namespace) -> int:
    from appliance import app

    cfg = _load_config(args.config)
    source = _super_source(args, cfg)
    logsetup.configure(cfg.log)
    return trio.run(app.main, cfg, source)


def cmd_kubeconfig(args: argparse.Namespace) -> int:
    from appliance import app
    from appliance.kube import errors
    from appliance.kube.client import open_client
    from appliance.manager import controller

    ns, sep, name = args.ref.partition("/")
    if not sep or not ns or not name:
        print("vc-appliance: expected NAMESPACE/NAME", file=sys.stderr)
        return EXIT_USAGE
    cfg = _load_config(args.config)
    source = _super_source(args, cfg)
    logsetup.configure(logsetup.LogSettings(level="WARNING"))

    async def fetch() -> bytes:
        creds = await app.super_credentials(source)
        async with open_client(creds) as superc:
            return await controller.admin_kubeconfig(superc, ns, name)

    try:
        data = trio.run(fetch)
    except app.StartupError as exc:
        print(f"vc-appliance: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (errors.KubeError, LookupError, ValueError) as exc:
        print(f"vc-appliance: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    sys.stdout.write(data.decode())
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    from appliance import app
    from appliance.kube import errors
    from appliance.kube.client import open_client
    from appliance.replicas import status

    cfg = _load_config(args.config)
    source = _super_source(args, cfg)
    logsetup.configure(logsetup.LogSettings(level="WARNING"))

    async def fetch() -> str:
        creds = await app.super_credentials(source)
        async with open_client(creds) as superc:
            return await status.fetch(superc, namespace=cfg.leases.namespace,
                                      label_selector=cfg.tenant_selector or None,
                                      leases_enabled=cfg.leases.enabled)

    try:
        text = trio.run(fetch)
    except app.StartupError as exc:
        print(f"vc-appliance: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except errors.KubeError as exc:
        print(f"vc-appliance: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    sys.stdout.write(text)
    return EXIT_OK


def _ref(text: str) -> tuple[str, str] | None:
    ns, sep, name = text.partition("/")
    return (ns, name) if sep and ns and name and "/" not in name else None


def _tenant_command(args: argparse.Namespace) -> tuple[tuple[str, str], app.SuperSource, Path]:
    """What `backup` and `restore` start from: the VirtualCluster, the super cluster, the data dir.
    Exits with EXIT_USAGE on a malformed reference or configuration."""
    ref = _ref(args.ref)
    if ref is None:
        print("vc-appliance: expected NAMESPACE/NAME", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)
    cfg = _load_config(args.config)
    source = _super_source(args, cfg)
    logsetup.configure(logsetup.LogSettings(level="WARNING"))
    return ref, source, Path(cfg.data_dir).expanduser()


def cmd_backup(args: argparse.Namespace) -> int:
    from appliance import app
    from appliance.kube import errors
    from appliance.kube.client import open_client
    from appliance.manager import archive, backups, report
    from appliance.util import private

    ref, source, data_dir = _tenant_command(args)

    async def take() -> archive.Backup:
        creds = await app.super_credentials(source)
        async with open_client(creds) as superc:
            backup = await backups.take(superc, data_dir=data_dir, namespace=ref[0], name=ref[1],
                                        now=report.now_rfc3339())
        data = await trio.to_thread.run_sync(archive.build, backup.manifest, backup.pairs, backup.pki)
        await trio.to_thread.run_sync(private.write_file, args.file, data)
        return backup

    try:
        backup = trio.run(take)
    except app.StartupError as exc:
        print(f"vc-appliance: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (errors.KubeError, backups.BackupError, OSError) as exc:
        print(f"vc-appliance: backup failed: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    m = backup.manifest
    print(f"backed up VirtualCluster {ref[0]}/{ref[1]}: {len(backup.pairs)} etcd keys at revision "
          f"{m.etcd_revision} ({m.etcd_mode} etcd) and {len(backup.pki)} PKI files to {args.file}")
    return EXIT_OK


def cmd_restore(args: argparse.Namespace) -> int:
    from appliance import app
    from appliance.kube import errors
    from appliance.kube.client import open_client
    from appliance.manager import backups

    ref, source, data_dir = _tenant_command(args)

    async def restore() -> str:
        data = await trio.Path(args.file).read_bytes()
        creds = await app.super_credentials(source)
        async with open_client(creds) as superc:
            with trio.fail_after(args.timeout):
                await backups.request_restore(superc, data_dir=data_dir, data=data, namespace=ref[0], name=ref[1],
                                              new=args.new, force=args.force)
                if args.no_wait:
                    return "requested; the appliance restores it before the tenant's first start"
                return await backups.wait_restored(superc, namespace=ref[0], name=ref[1])

    try:
        note = trio.run(restore)
    except app.StartupError as exc:
        print(f"vc-appliance: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except trio.TooSlowError:
        print(f"vc-appliance: restore not finished after {args.timeout:g} s; see kubectl describe vc -n {ref[0]} "
              f"{ref[1]}", file=sys.stderr)
        return EXIT_FAILURE
    except (errors.KubeError, backups.BackupError, OSError) as exc:
        print(f"vc-appliance: restore failed: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    print(f"VirtualCluster {ref[0]}/{ref[1]}: {note}")
    return EXIT_OK


def cmd_rotate_certs(args: argparse.Namespace) -> int:
    from appliance import app
    from appliance.kube import errors
    from appliance.kube.client import open_client
    from appliance.manager import renewals

    ref, source, _ = _tenant_command(args)

    async def rotate() -> str:
        creds = await app.super_credentials(source)
        async with open_client(creds) as superc:
            with trio.fail_after(args.timeout):
                token = await renewals.request(superc, namespace=ref[0], name=ref[1])
                if args.no_wait:
                    return f"renewal requested ({token})"
                return await renewals.wait_renewed(superc, namespace=ref[0], name=ref[1], token=token)

    try:
        note = trio.run(rotate)
    except app.StartupError as exc:
        print(f"vc-appliance: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except trio.TooSlowError:
        print(f"vc-appliance: renewal not reported after {args.timeout:g} s; see kubectl describe vc -n {ref[0]} "
              f"{ref[1]}", file=sys.stderr)
        return EXIT_FAILURE
    except (errors.KubeError, renewals.RenewalError) as exc:
        print(f"vc-appliance: rotate-certs failed: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    print(f"VirtualCluster {ref[0]}/{ref[1]}: {note}")
    return EXIT_OK


def cmd_version(args: argparse.Namespace) -> int:
    from appliance.controlplane import build

    print(f"vc-appliance {__version__} (Kubernetes {build.KUBERNETES_VERSION} test bed)")
    return EXIT_OK


def cmd_dev(args: argparse.Namespace) -> int:
    from appliance import devenv

    logsetup.configure(logsetup.LogSettings(level="INFO" if args.verbose else "WARNING"))
    state = args.state_dir.expanduser().resolve()
    try:
        if args.action == "up":
            return devenv.up(state, tenants=args.tenants, node=args.node)
        if args.action == "down":
            return devenv.down(state)
        return devenv.status(state)
    except devenv.DevError as exc:
        print(f"vc-appliance dev {args.action}: {exc}", file=sys.stderr)
        return EXIT_FAILURE


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vc-appliance", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    # The flags of every command that talks to the super cluster, with kubectl's names.
    kube = argparse.ArgumentParser(add_help=False)
    kube.add_argument("--config", type=Path, help="TOML config (default: built-in defaults + VCA_* env)")
    kube.add_argument("--kubeconfig", default="", metavar="PATH",
                      help="the super cluster's kubeconfig (default: [super] kubeconfig, KUBECONFIG, "
                           "~/.kube/config, in-cluster, in that order)")
    kube.add_argument("--context", default="", metavar="NAME",
                      help="the kubeconfig context (default: [super] context, else current-context)")

    run = sub.add_parser("run", parents=[kube], help="run the appliance in the foreground",
                         description="Run manager, syncer, proxy and the http endpoint until SIGTERM.")
    run.set_defaults(fn=cmd_run)

    kc = sub.add_parser("kubeconfig", parents=[kube], help="print a tenant's admin kubeconfig",
                        description="Print the admin kubeconfig of VirtualCluster NAMESPACE/NAME.")
    kc.add_argument("ref", metavar="NAMESPACE/NAME")
    kc.set_defaults(fn=cmd_kubeconfig)

    st = sub.add_parser("status", parents=[kube], help="show which replica holds which tenant",
                        description="Read the replica and tenant Leases in the super cluster and print "
                                    "which appliance replica serves each VirtualCluster.")
    st.set_defaults(fn=cmd_status)

    bk = sub.add_parser("backup", parents=[kube], help="back up a process-mode tenant into a file",
                        description="Write the etcd data (one consistent revision) and PKI of VirtualCluster "
                                    "NAMESPACE/NAME into FILE (a gzip tar, mode 0600: it holds keys and Secret "
                                    "data). Run it on the appliance's host with the appliance's --config.")
    bk.add_argument("ref", metavar="NAMESPACE/NAME")
    bk.add_argument("file", type=Path, metavar="FILE")
    bk.set_defaults(fn=cmd_backup)

    rs = sub.add_parser("restore", parents=[kube], help="re-create a tenant from a backup file",
                        description="Create VirtualCluster NAMESPACE/NAME from FILE: its spec, etcd data and (under "
                                    "the backup's own name) its PKI, so old kubeconfigs keep working. The "
                                    "running appliance loads the data before the tenant's first start. Run it "
                                    "on the appliance's host with the appliance's --config.")
    rs.add_argument("ref", metavar="NAMESPACE/NAME")
    rs.add_argument("file", type=Path, metavar="FILE")
    rs.add_argument("--new", action="store_true",
                    help="restore under another name than the backup's: a new tenant with new certificates")
    rs.add_argument("--force", action="store_true",
                    help="delete an existing VirtualCluster NAMESPACE/NAME (and all its data) first")
    rs.add_argument("--no-wait", action="store_true", help="return once the VirtualCluster is created")
    rs.add_argument("--timeout", type=float, default=600.0, metavar="SECONDS",
                    help="give up waiting after this long (default 600)")
    rs.set_defaults(fn=cmd_restore)

    rc = sub.add_parser("rotate-certs", parents=[kube], help="renew a process-mode tenant's certificates now",
                        description="Ask the appliance to renew every certificate of VirtualCluster NAMESPACE/NAME "
                                    "(its CA and service-account key stay), restart its processes one at a time "
                                    "and update its admin-kubeconfig secret; wait until it reports done.")
    rc.add_argument("ref", metavar="NAMESPACE/NAME")
    rc.add_argument("--no-wait", action="store_true", help="return once the request is made")
    rc.add_argument("--timeout", type=float, default=600.0, metavar="SECONDS",
                    help="give up waiting after this long (default 600)")
    rc.set_defaults(fn=cmd_rotate_certs)

    ver = sub.add_parser("version", help="print the version", description="Print the version.")
    ver.set_defaults(fn=cmd_version)

    dev = sub.add_parser(
        "dev", help="the embedded local default: super cluster + appliance + sample tenants",
        description="up: build what is missing, start a local super cluster, the appliance and "
                    "N sample VirtualClusters, write kubeconfigs into --state-dir, and return. "
                    "down: stop all of it. status: report. `up` is idempotent.",
    )
    dev.add_argument("action", choices=["up", "down", "status"])
    dev.add_argument("--state-dir", type=Path, default=Path("state"))
    dev.add_argument("--tenants", type=int, default=1, help="sample VirtualClusters (up)")
    dev.add_argument("--node", choices=["auto", "real", "kwok"], default="auto",
                     help="super cluster node (up): a real kubelet + containerd where the host allows "
                          "(auto, the default), or kwok's fake nodes")
    dev.add_argument("-v", "--verbose", action="store_true")
    dev.set_defaults(fn=cmd_dev)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.fn(args))
    except SystemExit as exc:  # a command's early exit (bad reference, bad config) is its result
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_FAILURE


if __name__ == "__main__":
    raise SystemExit(main())
