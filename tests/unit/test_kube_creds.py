"""Tests for appliance.kube.creds: kubeconfig parsing, in-cluster settings, SSL contexts.

Certificates are generated at run time; no key material is committed.
"""

from __future__ import annotations

import base64
import datetime
import json
import os
import ssl
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from appliance.kube import creds
from appliance.kube.creds import Credentials, KubeconfigError

SECRET_TOKEN = "s3cr3t-t0ken-value"


def make_cert(
    cn: str, *, issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None = None
) -> tuple[bytes, bytes, x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A self-signed CA (issuer None) or a leaf signed by `issuer`: (cert PEM, key PEM, ...)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    issuer_cert, issuer_key = issuer if issuer else (None, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_cert.subject if issuer_cert else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    cert = builder.sign(issuer_key, hashes.SHA256())
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem, cert, key


@pytest.fixture(scope="module")
def pki() -> dict[str, bytes]:
    """A CA and a client certificate signed by it."""
    ca_pem, _, ca_cert, ca_key = make_cert("test-ca")
    cert_pem, key_pem, _, _ = make_cert("admin", issuer=(ca_cert, ca_key))
    return {"ca": ca_pem, "cert": cert_pem, "key": key_pem}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def kubeconfig(
    *,
    clusters: list[dict[str, Any]],
    users: list[dict[str, Any]],
    contexts: list[dict[str, Any]],
    current: str | None,
) -> bytes:
    doc: dict[str, object] = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": clusters,
        "users": users,
        "contexts": contexts,
    }
    if current is not None:
        doc["current-context"] = current
    text: str = yaml.safe_dump(doc)
    return text.encode()


def simple(cluster: dict[str, Any], user: dict[str, Any], *, current: str | None = "ctx") -> bytes:
    return kubeconfig(
        clusters=[{"name": "c", "cluster": cluster}],
        users=[{"name": "u", "user": user}],
        contexts=[{"name": "ctx", "context": {"cluster": "c", "user": "u"}}],
        current=current,
    )


def test_inline_data(pki: dict[str, bytes]) -> None:
    """The -data fields are base64-decoded into PEM bytes."""
    data = simple(
        {"server": "https://127.0.0.1:6443/", "certificate-authority-data": b64(pki["ca"])},
        {"client-certificate-data": b64(pki["cert"]), "client-key-data": b64(pki["key"])},
    )
    got = creds.parse_kubeconfig(data)
    assert (
        Credentials(
            server="https://127.0.0.1:6443",
            ca_pem=pki["ca"],
            client_cert_pem=pki["cert"],
            client_key_pem=pki["key"],
        )
        == got
    )


def test_files_relative_to_base_dir(tmp_path: Path, pki: dict[str, bytes]) -> None:
    """File references resolve against base_dir; a token file is read and remembered."""
    (tmp_path / "pki").mkdir()
    (tmp_path / "pki" / "ca.crt").write_bytes(pki["ca"])
    (tmp_path / "pki" / "admin.crt").write_bytes(pki["cert"])
    (tmp_path / "pki" / "admin.key").write_bytes(pki["key"])
    (tmp_path / "token").write_text(SECRET_TOKEN + "\n")
    data = simple(
        {"server": "https://10.0.0.1:443", "certificate-authority": "pki/ca.crt"},
        {
            "client-certificate": "pki/admin.crt",
            "client-key": "pki/admin.key",
            "tokenFile": "token",
        },
    )
    got = creds.parse_kubeconfig(data, base_dir=tmp_path)
    assert pki["ca"] == got.ca_pem
    assert pki["key"] == got.client_key_pem
    assert SECRET_TOKEN == got.token
    assert tmp_path / "token" == got.token_file


def test_data_wins_over_file(pki: dict[str, bytes]) -> None:
    """When both forms are present the inline data is used, as kubectl does."""
    data = simple(
        {
            "server": "https://h:6443",
            "certificate-authority-data": b64(pki["ca"]),
            "certificate-authority": "/nonexistent/ca.crt",
        },
        {"token": SECRET_TOKEN},
    )
    assert pki["ca"] == creds.parse_kubeconfig(data).ca_pem


def test_context_selection_and_tls_options() -> None:
    """An explicit context overrides current-context; TLS options are carried over."""
    data = kubeconfig(
        clusters=[
            {"name": "one", "cluster": {"server": "https://one:6443"}},
            {
                "name": "two",
                "cluster": {
                    "server": "https://two:6443",
                    "insecure-skip-tls-verify": True,
                    "tls-server-name": "kubernetes.default",
                },
            },
        ],
        users=[{"name": "u", "user": {"token": SECRET_TOKEN}}],
        contexts=[
            {"name": "first", "context": {"cluster": "one", "user": "u"}},
            {"name": "second", "context": {"cluster": "two", "user": "u"}},
        ],
        current="first",
    )
    assert "https://one:6443" == creds.parse_kubeconfig(data).server
    second = creds.parse_kubeconfig(data, context="second")
    assert ("https://two:6443", True, "kubernetes.default") == (
        second.server,
        second.insecure_skip_tls_verify,
        second.tls_server_name,
    )


def test_context_without_user_is_anonymous() -> None:
    """A context with no user gives credentials without client auth."""
    data = kubeconfig(
        clusters=[{"name": "c", "cluster": {"server": "https://h"}}],
        users=[],
        contexts=[{"name": "ctx", "context": {"cluster": "c"}}],
        current="ctx",
    )
    got = creds.parse_kubeconfig(data)
    assert (None, None, None) == (got.token, got.client_cert_pem, got.client_key_pem)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        pytest.param(b"::: not yaml :::\n\t- x", "not valid YAML", id="yaml"),
        pytest.param(b"- a list", "not a YAML mapping", id="not-mapping"),
        pytest.param(
            simple({"server": "https://h"}, {"token": SECRET_TOKEN}, current=None),
            "no current-context",
            id="no-context",
        ),
        pytest.param(
            kubeconfig(clusters=[], users=[], contexts=[], current="missing"),
            "context 'missing' does not exist",
            id="unknown-context",
        ),
        pytest.param(
            kubeconfig(
                clusters=[],
                users=[],
                contexts=[{"name": "ctx", "context": {"cluster": "gone", "user": "u"}}],
                current="ctx",
            ),
            "cluster 'gone' not found",
            id="unknown-cluster",
        ),
        pytest.param(
            kubeconfig(
                clusters=[{"name": "c", "cluster": {"server": "https://h"}}],
                users=[],
                contexts=[{"name": "ctx", "context": {"cluster": "c", "user": "nobody"}}],
                current="ctx",
            ),
            "user 'nobody' not found",
            id="unknown-user",
        ),
        pytest.param(
            simple({}, {"token": SECRET_TOKEN}),
            "cluster 'c' has no https:// server",
            id="no-server",
        ),
        pytest.param(
            simple({"server": "https://h"}, {"client-certificate-data": b64(b"pem")}),
            "has client-certificate but no client-key",
            id="cert-without-key",
        ),
        pytest.param(
            simple({"server": "https://h"}, {"username": "admin", "password": SECRET_TOKEN}),
            "basic auth",
            id="basic-auth",
        ),
        pytest.param(
            simple({"server": "https://h", "certificate-authority": "/nonexistent/ca"}, {}),
            "cannot read certificate-authority /nonexistent/ca",
            id="missing-file",
        ),
    ],
)
def test_errors_name_what_is_missing(data: bytes, message: str) -> None:
    """Unusable kubeconfigs raise KubeconfigError saying what is wrong, never a secret."""
    with pytest.raises(KubeconfigError, match=message) as info:
        creds.parse_kubeconfig(data)
    assert SECRET_TOKEN not in str(info.value)


def test_bad_base64_does_not_echo_value() -> None:
    """Invalid base64 names the field but not its content."""
    data = simple({"server": "https://h"}, {"client-key-data": "!!" + SECRET_TOKEN + "!!"})
    with pytest.raises(KubeconfigError, match="client-key-data") as info:
        creds.parse_kubeconfig(data)
    assert SECRET_TOKEN not in str(info.value)


def test_yaml_error_does_not_echo_line() -> None:
    """A YAML error reports a line number, not the text of the offending line."""
    data = b"users:\n- name: u\n  user: {token: " + SECRET_TOKEN.encode() + b"\n"
    with pytest.raises(KubeconfigError) as info:
        creds.parse_kubeconfig(data)
    assert SECRET_TOKEN not in str(info.value)


def test_exec_user_needs_plugin() -> None:
    """A user with only an exec entry raises PluginRequired from the pure parser."""
    data = simple({"server": "https://h"}, {"exec": {"command": "aws", "apiVersion": "v1"}})
    with pytest.raises(creds.PluginRequired):
        creds.parse_kubeconfig(data)


def test_static_credentials_win_over_exec() -> None:
    """A token next to an exec entry is used directly, without running the plugin."""
    data = simple(
        {"server": "https://h"},
        {"token": SECRET_TOKEN, "exec": {"command": "false", "apiVersion": "v1"}},
    )
    assert SECRET_TOKEN == creds.parse_kubeconfig(data).token


def test_repr_hides_secrets(pki: dict[str, bytes]) -> None:
    """repr() shows where and which kinds of credentials, never the key or token."""
    record = Credentials(
        server="https://h",
        client_cert_pem=pki["cert"],
        client_key_pem=pki["key"],
        token=SECRET_TOKEN,
    )
    text = repr(record)
    assert SECRET_TOKEN not in text
    assert "PRIVATE KEY" not in text
    assert "https://h" in text


async def test_load_kubeconfig_from_file(tmp_path: Path) -> None:
    """load_kubeconfig reads the file in a thread and resolves paths next to it."""
    (tmp_path / "token").write_text(SECRET_TOKEN)
    path = tmp_path / "config"
    path.write_bytes(simple({"server": "https://h:6443"}, {"tokenFile": "token"}))
    got = await creds.load_kubeconfig(path)
    assert SECRET_TOKEN == got.token


async def test_load_kubeconfig_exec_plugin(tmp_path: Path, pki: dict[str, bytes]) -> None:
    """An exec user is resolved by the official client; the cluster part stays ours."""
    output = {
        "apiVersion": "client.authentication.k8s.io/v1",
        "kind": "ExecCredential",
        "status": {"token": SECRET_TOKEN},
    }
    path = tmp_path / "config"
    path.write_bytes(
        simple(
            {"server": "https://h:6443", "certificate-authority-data": b64(pki["ca"])},
            {
                "exec": {
                    "apiVersion": "client.authentication.k8s.io/v1",
                    "command": sys.executable,
                    "args": ["-c", f"print({json.dumps(json.dumps(output))})"],
                    "interactiveMode": "Never",
                }
            },
        )
    )
    got = await creds.load_kubeconfig(path)
    assert ("https://h:6443", pki["ca"], SECRET_TOKEN) == (got.server, got.ca_pem, got.token)


def _kubeconfig_file(path: Path, *, server: str, context: str, current: str | None, **user: str) -> Path:
    """One file holding cluster `c`, user `u` (with `user` fields) and context `context` over them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(kubeconfig(
        clusters=[{"name": "c", "cluster": {"server": server}}],
        users=[{"name": "u", "user": dict(user)}],
        contexts=[{"name": context, "context": {"cluster": "c", "user": "u"}}],
        current=current,
    ))
    return path


def test_merge_first_file_wins_each_name_and_current_context(tmp_path: Path) -> None:
    """As kubectl merges KUBECONFIG: a name's first definition wins, and so does the first current-context."""
    first = _kubeconfig_file(tmp_path / "a", server="https://a:6443", context="ctx-a", current=None,
                             token="from-a")
    second = _kubeconfig_file(tmp_path / "b", server="https://b:6443", context="ctx-b", current="ctx-b",
                              token="from-b")
    third = _kubeconfig_file(tmp_path / "c", server="https://c:6443", context="ctx-c", current="ctx-c")
    merged = creds.merge_kubeconfigs([(p.read_bytes(), p) for p in (first, second, third)])
    assert "ctx-b" == merged["current-context"]
    assert [{"name": "c", "cluster": {"server": "https://a:6443"}}] == merged["clusters"]
    assert ["ctx-a", "ctx-b", "ctx-c"] == [c["name"] for c in merged["contexts"]]
    got = creds.parse_kubeconfig(yaml.safe_dump(merged).encode())
    assert ("https://a:6443", "from-a") == (got.server, got.token)  # ctx-b's cluster and user come from a


def test_merge_resolves_paths_against_their_own_file(tmp_path: Path) -> None:
    """A relative token file (or certificate) belongs to the directory of the file that names it."""
    (tmp_path / "two" / "token").parent.mkdir()
    (tmp_path / "two" / "token").write_text(SECRET_TOKEN)
    empty = tmp_path / "one" / "config"
    empty.parent.mkdir()
    empty.write_text("")
    named = _kubeconfig_file(tmp_path / "two" / "config", server="https://h", context="x", current="x",
                             tokenFile="token")
    merged = creds.merge_kubeconfigs([(empty.read_bytes(), empty), (named.read_bytes(), named)])
    assert str(tmp_path / "two" / "token") == merged["users"][0]["user"]["tokenFile"]


@pytest.mark.parametrize(
    ("kubeconfig_env", "make", "expected"),
    [
        pytest.param(None, ["home/.kube/config"], (["home/.kube/config"], "~/.kube/config"), id="default"),
        pytest.param(None, [], None, id="nothing"),
        pytest.param("a::missing:b:a", ["a", "b", "home/.kube/config"], (["a", "b"], "KUBECONFIG"),
                     id="list-skips-empty-missing-and-repeats"),
        pytest.param("missing", ["home/.kube/config"], None, id="list-of-missing-hides-the-default"),
    ],
)
def test_kubeconfig_files_follow_kubectl(
    tmp_path: Path, kubeconfig_env: str | None, make: list[str], expected: tuple[list[str], str] | None
) -> None:
    """KUBECONFIG (missing files skipped) replaces ~/.kube/config; neither gives None (then in-cluster)."""
    for rel in make:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("")
    env = {} if kubeconfig_env is None else {
        "KUBECONFIG": ":".join(str(tmp_path / p) if p else "" for p in kubeconfig_env.split(":"))}
    got = creds.kubeconfig_files(env, tmp_path / "home")
    want = None if expected is None else ([tmp_path / p for p in expected[0]], expected[1])
    assert want == got


async def test_load_kubeconfigs_merges_and_refuses_an_unknown_context(tmp_path: Path) -> None:
    """Several files load as one; a context none of them has is named, with the ones that exist."""
    first = _kubeconfig_file(tmp_path / "a", server="https://a:6443", context="ctx-a", current="ctx-a",
                             token="from-a")
    second = _kubeconfig_file(tmp_path / "b", server="https://b:6443", context="ctx-b", current=None,
                              token="from-b")
    assert "https://a:6443" == (await creds.load_kubeconfigs([first, second])).server
    with pytest.raises(KubeconfigError, match=r"context 'nope' does not exist \(contexts: ctx-a, ctx-b\)"):
        await creds.load_kubeconfigs([first, second], context="nope")


def test_in_cluster(tmp_path: Path, pki: dict[str, bytes]) -> None:
    """In-cluster credentials come from the service env vars and the mounted token and CA."""
    (tmp_path / "token").write_text(SECRET_TOKEN)
    (tmp_path / "ca.crt").write_bytes(pki["ca"])
    env = {"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "443"}
    got = creds._in_cluster(env, tmp_path)
    assert (
        Credentials(
            server="https://[fd00::1]:443",
            ca_pem=pki["ca"],
            token=SECRET_TOKEN,
            token_file=tmp_path / "token",
        )
        == got
    )


def test_in_cluster_outside_cluster(tmp_path: Path) -> None:
    """Without the service env vars in_cluster says so."""
    with pytest.raises(KubeconfigError, match="KUBERNETES_SERVICE_HOST"):
        creds._in_cluster({}, tmp_path)


def test_ssl_context_loads_and_cleans_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pki: dict[str, bytes]
) -> None:
    """The context verifies with the CA, carries the client cert, and leaves no key file."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    record = Credentials(
        server="https://h", ca_pem=pki["ca"], client_cert_pem=pki["cert"], client_key_pem=pki["key"]
    )
    ctx = creds.ssl_context(record)
    assert [] == os.listdir(tmp_path)
    assert ssl.CERT_REQUIRED == ctx.verify_mode
    assert ctx.check_hostname
    assert 1 == ctx.cert_store_stats()["x509_ca"]


def test_ssl_context_is_new_each_call(pki: dict[str, bytes]) -> None:
    """Each call returns its own context, so ALPN set by one user cannot leak to another."""
    record = Credentials(server="https://h", ca_pem=pki["ca"])
    assert creds.ssl_context(record) is not creds.ssl_context(record)


def test_ssl_context_insecure() -> None:
    """insecure-skip-tls-verify turns off both chain and hostname checks."""
    ctx = creds.ssl_context(Credentials(server="https://h", insecure_skip_tls_verify=True))
    assert (ssl.CERT_NONE, False) == (ctx.verify_mode, ctx.check_hostname)


def test_ssl_context_mismatched_key(pki: dict[str, bytes]) -> None:
    """A key that does not match the certificate is a KubeconfigError, not an SSLError."""
    _, other_key, _, _ = make_cert("other")
    record = Credentials(server="https://h", client_cert_pem=pki["cert"], client_key_pem=other_key)
    with pytest.raises(KubeconfigError, match="do not load"):
        creds.ssl_context(record)


@pytest.mark.parametrize(("cluster", "user", "refused"), [
    ({"certificate-authority": "ca.pem"}, {"token": "t"}, ["cluster 'c' certificate-authority"]),
    ({}, {"client-certificate": "c.pem", "client-key": "k.pem"},
     ["user 'u' client-certificate", "user 'u' client-key"]),
    ({}, {"tokenFile": "token"}, ["user 'u' tokenFile"]),
    ({}, {"exec": {"command": "sh", "apiVersion": "client.authentication.k8s.io/v1"}}, ["user 'u' exec"]),
    ({}, {"auth-provider": {"name": "oidc"}}, ["user 'u' auth-provider"]),
    # A file reference loses even next to inline data that would win in kubectl.
    ({}, {"token": "t", "tokenFile": "token"}, ["user 'u' tokenFile"]),
])
def test_untrusted_kubeconfig_refuses_files_and_plugins_before_reading_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cluster: dict[str, Any], user: dict[str, Any],
    refused: list[str],
) -> None:
    """Every file or plugin entry is named in the error, and no file is read: the referenced
    files exist in the working directory with a marker the result would carry."""
    for name in ("ca.pem", "c.pem", "k.pem", "token"):
        (tmp_path / name).write_text(SECRET_TOKEN)
    monkeypatch.chdir(tmp_path)
    data = simple({"server": "https://h", **cluster}, user)
    with pytest.raises(creds.UntrustedKubeconfig) as info:
        creds.parse_untrusted_kubeconfig(data, where="annotation a")
    assert info.value.fields == refused
    assert str(info.value) == f"annotation a: only inline credentials are accepted; remove {', '.join(refused)}"
    assert SECRET_TOKEN not in str(info.value)


def test_untrusted_kubeconfig_accepts_inline_and_prefixes_other_errors(pki: dict[str, bytes]) -> None:
    """Inline data parses as with `parse_kubeconfig`; the parser's other objections name the source."""
    ok = creds.parse_untrusted_kubeconfig(simple(
        {"server": "https://h:6443", "certificate-authority-data": b64(pki["ca"])},
        {"client-certificate-data": b64(pki["cert"]), "client-key-data": b64(pki["key"])}), where="secret s")
    assert (ok.server, ok.ca_pem, ok.client_key_pem, ok.token_file) == ("https://h:6443", pki["ca"], pki["key"], None)
    with pytest.raises(KubeconfigError, match=r"^secret s: kubeconfig is not valid YAML"):
        creds.parse_untrusted_kubeconfig(b"clusters: [unclosed", where="secret s")
    with pytest.raises(KubeconfigError, match=r"^secret s: .*no https:// server"):
        creds.parse_untrusted_kubeconfig(simple({}, {"token": "t"}), where="secret s")
