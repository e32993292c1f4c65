"""Credentials for one apiserver: kubeconfig or in-cluster settings → `Credentials` → SSLContext.

`parse_kubeconfig` understands the common kubeconfig subset itself (PyYAML, no network):
inline or file certificates, tokens, token files, TLS options. Users that need an `exec`
or `auth-provider` plugin are resolved by `load_kubeconfig` with the official `kubernetes`
package inside a worker thread. Several files merge as kubectl merges `KUBECONFIG`
(`merge_kubeconfigs`; `kubeconfig_files` lists them); choosing between a flag, a config
setting and these files is the caller's business. A kubeconfig read from a cluster object
goes through `parse_untrusted_kubeconfig`, which accepts inline credentials only. This module is the only
importer of that package (STYLE rule 12) and it never touches its process-wide default configuration.
Invariant: no secret (key, token, base64 payload) ever appears in a repr, log line or
exception message produced here.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import logging
import os
import shutil
import ssl
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio
import yaml

__all__ = [
    "Credentials",
    "KubeconfigError",
    "PluginRequired",
    "UntrustedKubeconfig",
    "in_cluster",
    "kubeconfig_files",
    "load_cert_chain_pem",
    "load_kubeconfig",
    "load_kubeconfigs",
    "merge_kubeconfigs",
    "parse_kubeconfig",
    "parse_untrusted_kubeconfig",
    "read_token_file",
    "ssl_context",
]

logger = logging.getLogger(__name__)

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class KubeconfigError(ValueError):
    """The kubeconfig (or in-cluster environment) cannot be turned into credentials."""


class PluginRequired(KubeconfigError):
    """The user authenticates through an `exec` or `auth-provider` plugin.

    `parse_kubeconfig` cannot run plugins; `load_kubeconfig` handles this case.
    """


class UntrustedKubeconfig(KubeconfigError):
    """A kubeconfig from a cluster object names files or plugins; `fields` lists them."""

    def __init__(self, message: str, fields: list[str]) -> None:
        super().__init__(message)
        self.fields = fields


@dataclass(frozen=True, slots=True, repr=False)
class Credentials:
    """Where an apiserver is and how to authenticate to it; one record per tenant or cluster.

    `token_file`, when set, is re-read by the client from time to time, because projected
    service-account tokens rotate under a long-running process.
    """

    server: str
    ca_pem: bytes | None = None
    client_cert_pem: bytes | None = None
    client_key_pem: bytes | None = None
    token: str | None = None
    insecure_skip_tls_verify: bool = False
    tls_server_name: str | None = None
    token_file: Path | None = None

    def __repr__(self) -> str:
        def present(value: object) -> str:
            return "<set>" if value else "None"

        return (
            f"Credentials(server={self.server!r}, ca_pem={present(self.ca_pem)}, "
            f"client_cert_pem={present(self.client_cert_pem)}, "
            f"client_key_pem={'<redacted>' if self.client_key_pem else 'None'}, "
            f"token={'<redacted>' if self.token else 'None'}, "
            f"insecure_skip_tls_verify={self.insecure_skip_tls_verify}, "
            f"tls_server_name={self.tls_server_name!r}, token_file={self.token_file!r})"
        )


# ---------------------------------------------------------------------------------------
# kubeconfig parsing (pure apart from reading the files the kubeconfig names)


def parse_kubeconfig(
    data: bytes, *, context: str | None = None, base_dir: Path | None = None
) -> Credentials:
    """Resolve one context of a kubeconfig document into `Credentials`.

    Relative file paths resolve against `base_dir` (the kubeconfig's directory).
    Raises KubeconfigError naming the missing or malformed entry, and PluginRequired when
    the user has only an `exec`/`auth-provider` entry.
    """
    creds, user, user_name = _parse(data, context=context, base_dir=base_dir)
    if _needs_plugin(user):
        raise PluginRequired(
            f"user {user_name!r} authenticates through an exec/auth-provider plugin"
        )
    return creds


#: Entries that make a kubeconfig reach outside itself: files on the reader's host or programs
#: it runs. `proxy-url` is not among them: it names where to connect, like `server`.
_CLUSTER_REFERENCES = ("certificate-authority",)
_USER_REFERENCES = ("client-certificate", "client-key", "tokenFile", "exec", "auth-provider")


def parse_untrusted_kubeconfig(data: bytes, *, where: str = "kubeconfig") -> Credentials:
    """`parse_kubeconfig` for a kubeconfig that someone else wrote into a cluster object.

    Only inline credentials are accepted. A file path would make the appliance read its own
    host's files (its service-account token, a tenant's key) and send them to the server the
    writer chose; a plugin would run a program of the writer's choice. Raises
    UntrustedKubeconfig naming every such entry, before anything is read or run.
    """
    try:
        return _parse_untrusted(data, where)
    except UntrustedKubeconfig:
        raise
    except KubeconfigError as exc:
        raise KubeconfigError(f"{where}: {exc}") from None


def _parse_untrusted(data: bytes, where: str) -> Credentials:
    doc = _load_yaml(data)
    context_name = doc.get("current-context")
    if not context_name:
        raise KubeconfigError("kubeconfig has no current-context")
    ctx = _named(doc, "contexts", "context", context_name)
    found: list[str] = []
    cluster_name = ctx.get("cluster")
    if cluster_name:
        cluster = _named(doc, "clusters", "cluster", cluster_name)
        found += [f"cluster {cluster_name!r} {k}" for k in _CLUSTER_REFERENCES if cluster.get(k)]
    user_name = ctx.get("user")
    if user_name:
        user = _named(doc, "users", "user", user_name)
        found += [f"user {user_name!r} {k}" for k in _USER_REFERENCES if user.get(k)]
    if found:
        raise UntrustedKubeconfig(
            f"{where}: only inline credentials are accepted; remove {', '.join(found)}", found
        )
    return parse_kubeconfig(data, base_dir=None)


def _load_yaml(data: bytes) -> dict[str, Any]:
    try:
        doc = yaml.safe_load(data)
    except yaml.YAMLError as exc:
        # The exception text can quote the offending line, which may hold a secret.
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise KubeconfigError(f"kubeconfig is not valid YAML{where}") from None
    if not isinstance(doc, dict):
        raise KubeconfigError("kubeconfig is not a YAML mapping")
    return doc


def _parse(
    data: bytes, *, context: str | None, base_dir: Path | None
) -> tuple[Credentials, dict[str, Any], str]:
    return _parse_doc(_load_yaml(data), context=context, base_dir=base_dir)


def _parse_doc(
    doc: dict[str, Any], *, context: str | None, base_dir: Path | None
) -> tuple[Credentials, dict[str, Any], str]:
    """Parse everything except plugins; return the credentials, the user entry and its name."""
    context_name = context if context is not None else doc.get("current-context")
    if not context_name:
        raise KubeconfigError("no context given and kubeconfig has no current-context")
    ctx = _named(doc, "contexts", "context", context_name)
    cluster_name = ctx.get("cluster")
    if not cluster_name:
        raise KubeconfigError(f"context {context_name!r} names no cluster")
    cluster = _named(doc, "clusters", "cluster", cluster_name)
    user_name = ctx.get("user") or ""
    user = _named(doc, "users", "user", user_name) if user_name else {}

    server = cluster.get("server")
    if not isinstance(server, str) or not server.startswith(("https://", "http://")):
        raise KubeconfigError(f"cluster {cluster_name!r} has no https:// server")
    where_c = f"cluster {cluster_name!r}"
    where_u = f"user {user_name!r}"

    ca = _data_or_file(cluster, "certificate-authority", where_c, base_dir)
    cert = _data_or_file(user, "client-certificate", where_u, base_dir)
    key = _data_or_file(user, "client-key", where_u, base_dir)
    if (cert is None) != (key is None):
        have, missing = (
            ("client-certificate", "client-key")
            if key is None
            else (
                "client-key",
                "client-certificate",
            )
        )
        raise KubeconfigError(f"{where_u} has {have} but no {missing}")

    token: str | None = None
    token_file: Path | None = None
    if user.get("token"):
        token = str(user["token"]).strip()
    elif user.get("tokenFile"):
        token_file = _resolve(str(user["tokenFile"]), base_dir)
        token = _read_token(token_file, where_u)

    if not _needs_plugin(user) and cert is None and token is None and user.get("username"):
        raise KubeconfigError(f"{where_u} uses basic auth, which Kubernetes no longer supports")

    server_name = cluster.get("tls-server-name")
    creds = Credentials(
        server=server.rstrip("/"),
        ca_pem=ca,
        client_cert_pem=cert,
        client_key_pem=key,
        token=token,
        insecure_skip_tls_verify=_flag(cluster.get("insecure-skip-tls-verify"), where_c),
        tls_server_name=str(server_name) if server_name else None,
        token_file=token_file,
    )
    return creds, user, user_name


def _flag(value: object, where: str) -> bool:
    """A kubeconfig boolean; quoted "true"/"false" are accepted, anything else refused."""
    if value is None or isinstance(value, bool):
        return bool(value)
    if isinstance(value, str) and value.lower() in {"true", "false"}:
        return value.lower() == "true"
    raise KubeconfigError(f"{where}: insecure-skip-tls-verify is not a boolean")


def _needs_plugin(user: dict[str, Any]) -> bool:
    """True if only a plugin can authenticate this user (static credentials win, as in kubectl)."""
    static = user.get("token") or user.get("tokenFile") or user.get("client-certificate-data")
    static = static or user.get("client-certificate")
    return not static and bool(user.get("exec") or user.get("auth-provider"))


def _named(doc: dict[str, Any], section: str, inner: str, name: str) -> dict[str, Any]:
    """Find `name` in a kubeconfig list such as `clusters: [{name, cluster: {...}}]`."""
    entries = doc.get(section) or []
    if not isinstance(entries, list):
        raise KubeconfigError(f"kubeconfig {section} is not a list")
    for entry in entries:
        if isinstance(entry, dict) and entry.get("name") == name:
            body = entry.get(inner) or {}
            if not isinstance(body, dict):
                raise KubeconfigError(f"{inner} {name!r} is not a mapping")
            return body
    if section == "contexts":  # a name the user typed: say which ones exist, as kubectl does
        known = ", ".join(sorted(str(e.get("name")) for e in entries if isinstance(e, dict))) or "none"
        raise KubeconfigError(f"context {name!r} does not exist (contexts: {known})")
    raise KubeconfigError(f"{inner} {name!r} not found in kubeconfig {section}")


def _resolve(path: str, base_dir: Path | None) -> Path:
    p = Path(path).expanduser()
    if not p.is_absolute() and base_dir is not None:
        p = base_dir / p
    return p


def _data_or_file(
    entry: dict[str, Any], field: str, where: str, base_dir: Path | None
) -> bytes | None:
    """`<field>-data` (base64) wins over `<field>` (a file path), as in kubectl."""
    inline = entry.get(f"{field}-data")
    if inline:
        try:
            # kubectl tolerates line breaks inside the base64 text; so do we.
            return base64.b64decode("".join(str(inline).split()), validate=True)
        except (binascii.Error, ValueError):
            raise KubeconfigError(f"{where} has a {field}-data that is not valid base64") from None
    path = entry.get(field)
    if path:
        file = _resolve(str(path), base_dir)
        try:
            return file.read_bytes()
        except OSError as exc:
            raise KubeconfigError(f"{where}: cannot read {field} {file}: {exc.strerror}") from None
    return None


def _read_token(path: Path, where: str) -> str:
    try:
        token = path.read_text().strip()
    except OSError as exc:
        raise KubeconfigError(f"{where}: cannot read token file {path}: {exc.strerror}") from None
    if not token:
        raise KubeconfigError(f"{where}: token file {path} is empty")
    return token


def read_token_file(path: Path) -> str:
    """Read a bearer token file (blocking; call it in a thread). Raises KubeconfigError."""
    return _read_token(path, "token file")


# ---------------------------------------------------------------------------------------
# Loading from disk, with the official client as the plugin fallback


#: Where kubectl looks when neither --kubeconfig nor KUBECONFIG says otherwise.
DEFAULT_KUBECONFIG = Path(".kube") / "config"


def kubeconfig_files(env: Mapping[str, str], home: Path) -> tuple[list[Path], str] | None:
    """The kubeconfig files kubectl reads without `--kubeconfig`, and what named them.

    `KUBECONFIG` (a colon-separated list; empty entries and duplicates dropped, missing files
    skipped) when set, else `~/.kube/config` if it exists. None when neither gives a file: then,
    and only then, kubectl falls back to the in-cluster service account. Only checks which
    files exist; reads none.
    """
    listed = env.get("KUBECONFIG", "")
    if listed:
        paths = [Path(p).expanduser() for p in dict.fromkeys(listed.split(os.pathsep)) if p]
        existing = [p for p in paths if p.exists()]
        return (existing, "KUBECONFIG") if existing else None
    default = home / DEFAULT_KUBECONFIG
    return ([default], f"~/{DEFAULT_KUBECONFIG}") if default.exists() else None


#: Kubeconfig fields that hold file paths, which resolve against the file naming them.
_PATH_FIELDS = {
    "clusters": ("certificate-authority",),
    "users": ("client-certificate", "client-key", "tokenFile"),
}
_MERGED_SECTIONS = (("clusters", "cluster"), ("users", "user"), ("contexts", "context"))


def merge_kubeconfigs(docs: Sequence[tuple[bytes, Path]]) -> dict[str, Any]:
    """Merge kubeconfig files as kubectl merges `KUBECONFIG`, in the order given.

    For each named cluster, user and context the first file that has the name wins; the
    current-context comes from the first file that sets one. Relative paths (certificate
    files, token files, an exec command with a slash) are made absolute against the
    directory of their own file first, so the merged document is valid anywhere.
    Raises KubeconfigError naming the file that is not a kubeconfig.
    """
    merged: dict[str, Any] = {"apiVersion": "v1", "kind": "Config"}
    for section, _ in _MERGED_SECTIONS:
        merged[section] = []
    seen: dict[str, set[str]] = {section: set() for section, _ in _MERGED_SECTIONS}
    for data, path in docs:
        try:
            doc = _load_yaml(data) if data.strip() else {}  # kubectl accepts an empty file
        except KubeconfigError as exc:
            raise KubeconfigError(f"{path}: {exc}") from None
        if not merged.get("current-context") and doc.get("current-context"):
            merged["current-context"] = doc["current-context"]
        for section, inner in _MERGED_SECTIONS:
            entries = doc.get(section) or []
            if not isinstance(entries, list):
                raise KubeconfigError(f"{path}: kubeconfig {section} is not a list")
            for entry in entries:
                name = entry.get("name") if isinstance(entry, dict) else None
                if not isinstance(name, str) or name in seen[section]:
                    continue
                seen[section].add(name)
                merged[section].append(_absolute(section, inner, entry, path.parent))
    return merged


def _absolute(section: str, inner: str, entry: dict[str, Any], base_dir: Path) -> dict[str, Any]:
    """A copy of one named entry with its file paths resolved against `base_dir`."""
    body = entry.get(inner)
    if not isinstance(body, dict):
        return entry
    body = dict(body)
    for field in _PATH_FIELDS.get(section, ()):
        if body.get(field):
            body[field] = str(_resolve(str(body[field]), base_dir))
    plugin = body.get("exec")
    if section == "users" and isinstance(plugin, dict) and "/" in str(plugin.get("command", "")):
        body["exec"] = dict(plugin, command=str(_resolve(str(plugin["command"]), base_dir)))
    return dict(entry, **{inner: body})


async def load_kubeconfig(
    path: Path, *, context: str | None = None, limiter: trio.CapacityLimiter | None = None
) -> Credentials:
    """Read and resolve a kubeconfig file in a worker thread.

    Plugin users (`exec`, `auth-provider`) are resolved by the official `kubernetes`
    package in the same thread; the result is a snapshot, so a caller that sees
    `Unauthorized` later should load again.

    Cancellation: not abandoned; a running exec plugin is waited for.
    """
    return await load_kubeconfigs([path], context=context, limiter=limiter)


async def load_kubeconfigs(
    paths: Sequence[Path], *, context: str | None = None, limiter: trio.CapacityLimiter | None = None
) -> Credentials:
    """`load_kubeconfig` over several files merged as kubectl merges them (`merge_kubeconfigs`).

    Every path must be readable: the caller drops the missing ones kubectl would skip.
    """
    return await trio.to_thread.run_sync(_load_blocking, list(paths), context, limiter=limiter)


def _load_blocking(paths: list[Path], context: str | None) -> Credentials:
    docs = []
    for path in paths:
        try:
            docs.append((path.read_bytes(), path))
        except OSError as exc:
            raise KubeconfigError(f"cannot read kubeconfig {path}: {exc.strerror}") from None
    doc = merge_kubeconfigs(docs)
    creds, user, user_name = _parse_doc(doc, context=context, base_dir=None)
    if not _needs_plugin(user):
        return creds
    logger.info("resolving user %r of %s through its plugin", user_name, ", ".join(map(str, paths)))
    return _with_plugin_auth(creds, doc, context)


def _with_plugin_auth(creds: Credentials, doc: dict[str, Any], context: str | None) -> Credentials:
    """Run the user's plugin through the official client and add its token or certificate."""
    # Imported here: slow to import, and only this thread function may use it.
    from kubernetes.client import Configuration
    from kubernetes.config import kube_config
    from kubernetes.config.config_exception import ConfigException

    private_dir = tempfile.mkdtemp(prefix="vc-kubeconfig-")
    try:
        cfg = Configuration()
        try:
            kube_config.load_kube_config_from_dict(  # type: ignore[no-untyped-call]
                config_dict=doc,
                context=context,
                client_configuration=cfg,
                persist_config=False,
                temp_file_path=private_dir,
            )
        except ConfigException as exc:
            # The loader's messages name keys and quote plugin stderr, never credentials.
            raise KubeconfigError(f"kubeconfig plugin failed: {str(exc)[:200]}") from None
        bearer = cfg.api_key.get("BearerToken") or cfg.api_key.get("authorization")
        token = None
        if bearer:
            scheme, _, value = str(bearer).partition(" ")
            token = value if scheme.lower() == "bearer" and value else None
        cert = _read_optional(cfg.cert_file)
        key = _read_optional(cfg.key_file)
    finally:
        shutil.rmtree(private_dir, ignore_errors=True)
        _forget_temp_files(kube_config, private_dir)
    if token is None and (cert is None or key is None):
        raise KubeconfigError(
            "kubeconfig plugin produced neither a bearer token nor a client certificate"
        )
    if token is not None:
        return dataclasses.replace(creds, token=token)
    return dataclasses.replace(creds, client_cert_pem=cert, client_key_pem=key)


def _read_optional(path: object) -> bytes | None:
    if not path:
        return None
    try:
        return Path(str(path)).read_bytes()
    except OSError:
        return None


def _forget_temp_files(module: Any, private_dir: str) -> None:
    """Drop the official client's cache entries for files we deleted (they hold key material)."""
    registry = getattr(module, "_temp_files", None)
    if isinstance(registry, dict):
        for content_key, file_name in list(registry.items()):
            if str(file_name).startswith(private_dir + os.sep):
                del registry[content_key]


# ---------------------------------------------------------------------------------------
# In-cluster


def in_cluster() -> Credentials:
    """Credentials of the Pod's service account (KUBERNETES_SERVICE_HOST/PORT + mounted files)."""
    return _in_cluster(os.environ, SERVICE_ACCOUNT_DIR)


def _in_cluster(env: Mapping[str, str], sa_dir: Path) -> Credentials:
    host = env.get("KUBERNETES_SERVICE_HOST")
    port = env.get("KUBERNETES_SERVICE_PORT")
    if not host or not port:
        raise KubeconfigError("not in a cluster: KUBERNETES_SERVICE_HOST/PORT are not set")
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # IPv6 literal
    token_file = sa_dir / "token"
    token = _read_token(token_file, "service account")
    try:
        ca = (sa_dir / "ca.crt").read_bytes()
    except OSError as exc:
        raise KubeconfigError(
            f"service account: cannot read {sa_dir / 'ca.crt'}: {exc.strerror}"
        ) from None
    return Credentials(
        server=f"https://{host}:{port}", ca_pem=ca, token=token, token_file=token_file
    )


# ---------------------------------------------------------------------------------------
# TLS


def ssl_context(creds: Credentials, *, alpn: list[str] | None = None) -> ssl.SSLContext:
    """A new client SSLContext for `creds`; blocking (reads trust store, writes temp files).

    Returns a fresh context per call because httpcore sets ALPN on the context it is given;
    the HTTP client, WebSocket client and proxy upstream each need their own. When
    `creds.tls_server_name` is set, the caller passes it as `server_hostname`.
    """
    cadata: str | bytes | None = None
    if creds.ca_pem:
        # `cadata` wants PEM as str; bytes are read as DER.
        cadata = creds.ca_pem.decode("ascii") if b"-----BEGIN" in creds.ca_pem else creds.ca_pem
    try:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=cadata)
    except (ssl.SSLError, UnicodeDecodeError) as exc:
        raise KubeconfigError(
            f"certificate authority does not load: {type(exc).__name__}"
        ) from None
    if creds.insecure_skip_tls_verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if creds.client_cert_pem is not None and creds.client_key_pem is not None:
        _load_client_cert(ctx, creds.client_cert_pem, creds.client_key_pem)
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx


def _load_client_cert(ctx: ssl.SSLContext, cert: bytes, key: bytes) -> None:
    try:
        load_cert_chain_pem(ctx, cert_pem=cert, key_pem=key)
    except ssl.SSLError as exc:
        raise KubeconfigError(f"client certificate and key do not load: {exc.reason}") from None


def load_cert_chain_pem(ctx: ssl.SSLContext, *, cert_pem: bytes | str, key_pem: bytes | str) -> None:
    """Load a PEM certificate chain and its unencrypted key into `ctx`.

    `load_cert_chain` only takes files, so they exist for the duration of the call: 0600 in a
    fresh 0700 temporary directory, removed afterwards. This is the one place besides
    `util.private` that writes key material; `kube/` may not import that module (DESIGN §2).
    Raises ssl.SSLError when they do not load. Blocking: run it in a thread or at start-up.
    """
    with tempfile.TemporaryDirectory(prefix="vc-tls-") as private_dir:
        cert_path, key_path = Path(private_dir, "tls.crt"), Path(private_dir, "tls.key")
        for path, pem in ((cert_path, cert_pem), (key_path, key_pem)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(pem.encode("ascii") if isinstance(pem, str) else pem)
        ctx.load_cert_chain(cert_path, key_path)
