"""The `vc-appliance` command.

    vc-appliance run [--config PATH]        run the appliance (manager, syncer, proxy, http)
    vc-appliance kubeconfig NS/NAME         print a tenant's admin kubeconfig
    vc-appliance status                     which replica holds which tenant (Leases)
    vc-appliance dev up|down|status         the embedded local default (see `dev --help`)
    vc-appliance version

`run`, `kubeconfig` and `status` reach the super cluster as kubectl does: `--kubeconfig PATH`
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
    except KeyboardInterrupt:
        return EXIT_FAILURE


if __name__ == "__main__":
    raise SystemExit(main())
