"""etcd's v3 JSON gateway as the appliance's `root` user: auth set-up, tenant users, key ranges.

Theory of operation. Tenant apiservers speak gRPC with their own client certificate, and etcd
takes its CN as the user name. Each tenant user has one role of the same name that grants
readwrite on the tenant's key prefix and nothing else; users are made with `no_password`
(a user with an empty password can be logged into with an empty password, by anyone who
passes the TLS handshake). The appliance uses the JSON gateway instead, where etcd does not
take the CN (and, once auth is on, refuses a client certificate that has one): it presents a
CN-less certificate for the handshake and logs in as `root` with a password:

    auth off:  user root (+ password), role root, grant, auth enable, then log in
    auth on:   log in: /v3/auth/authenticate → token, sent as `Authorization` from then on

Every change is idempotent ("already exists" and "not found" count as done), so a crash half
way is repaired by the next call. Request bodies and error classification are pure functions;
only `open_gateway` and the `Gateway` methods do I/O. Errors: `GatewayError(code, message)`
from etcd's JSON error body (its gRPC code) or from an httpx failure (code -1); messages
never carry the password or the token.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import ssl
from collections.abc import AsyncIterator, Collection
from typing import Any

import httpx

from appliance.util import tenancy

ROOT = "root"
#: X.509 limits a CN to 64 characters, and the CN is the user name.
MAX_USER = 64
TENANT_USER_PREFIX = "tenant-"

ALREADY_EXISTS = "already exists"
NOT_FOUND = "not found"
AUTH_NOT_ENABLED = "authentication is not enabled"


class GatewayError(Exception):
    """etcd answered a gateway request with an error (or could not be reached: code -1)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"etcd: {message} (code {code})")
        self.code = code
        self.message = message


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def prefix_range(prefix: str) -> dict[str, str]:
    """The gateway's `key`/`range_end` pair for every key under `prefix` (ending in '/').

    Raises ValueError for a prefix that is not at least `/a/b/`: a typo must not reach the
    whole keyspace.
    """
    if not prefix.endswith("/") or prefix.count("/") < 3:
        raise ValueError(f"refusing the broad etcd prefix {prefix!r}")
    key = prefix.encode()
    return {"key": _b64(key), "range_end": _b64(key[:-1] + bytes([key[-1] + 1]))}


def tenant_user(cluster_key: tenancy.ClusterKey) -> str:
    """The etcd user (and role, and client certificate CN) of a tenant, from its cluster key."""
    name = TENANT_USER_PREFIX + cluster_key
    if len(name) <= MAX_USER:
        return name
    digest = hashlib.sha256(cluster_key.encode()).hexdigest()[:16]
    return f"{name[: MAX_USER - len(digest) - 1]}-{digest}"


def error_from(status: int, body: bytes) -> GatewayError:
    """A `GatewayError` from an error response (etcd's `{"code", "message"}`, else text)."""
    try:
        doc = json.loads(body)
        return GatewayError(int(doc["code"]), str(doc["message"])[:256])
    except (ValueError, KeyError, TypeError):
        return GatewayError(-1, f"HTTP {status}: {body[:256].decode(errors='replace').strip()}")


class Gateway:
    """One logged-in session with the JSON gateway (see `open_gateway`)."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self._client = client
        #: Whether logging in turned authentication on (the first start of this etcd).
        self.enabled_auth = False

    async def call(self, path: str, body: dict[str, Any], *, ok: Collection[str] = ()) -> dict[str, Any]:
        """POST `body` to `path`; an error whose message contains one of `ok` counts as done."""
        try:
            r = await self._client.post(path, json=body)
        except httpx.HTTPError as exc:
            raise GatewayError(-1, f"{type(exc).__name__} on {path}") from exc
        if r.status_code == 200:
            result: dict[str, Any] = r.json()
            return result
        error = error_from(r.status_code, r.content)
        if any(marker in error.message for marker in ok):
            return {}
        raise error

    async def log_in(self, password: str) -> None:
        """Log in as root, turning auth on first if it is off (see `enabled_auth`)."""
        try:
            token = await self._authenticate(password)
        except GatewayError as exc:
            if AUTH_NOT_ENABLED not in exc.message:
                raise
            await self._enable_auth(password)
            self.enabled_auth = True
            token = await self._authenticate(password)
        self._client.headers["Authorization"] = token

    async def _authenticate(self, password: str) -> str:
        return str((await self.call("/v3/auth/authenticate", {"name": ROOT, "password": password}))["token"])

    async def _enable_auth(self, password: str) -> None:
        # Auth is off, so these need no token; a root left by an interrupted earlier run
        # gets our password.
        if not await self.call("/v3/auth/user/add", {"name": ROOT, "password": password}, ok=[ALREADY_EXISTS]):
            await self.call("/v3/auth/user/changepw", {"name": ROOT, "password": password})
        await self.call("/v3/auth/role/add", {"name": ROOT}, ok=[ALREADY_EXISTS])
        await self.call("/v3/auth/user/grant", {"user": ROOT, "role": ROOT})
        await self.call("/v3/auth/enable", {})

    async def ensure_tenant(self, user: str, prefix: str) -> None:
        """User `user` (certificate only) with role `user`: readwrite on `prefix`, nothing else."""
        if user == ROOT:
            raise ValueError("a tenant cannot be etcd's root user")
        await self.call("/v3/auth/user/add", {"name": user, "options": {"no_password": True}}, ok=[ALREADY_EXISTS])
        await self.call("/v3/auth/role/add", {"name": user}, ok=[ALREADY_EXISTS])
        await self.call("/v3/auth/role/grant", {"name": user, "perm": {"permType": "READWRITE", **prefix_range(prefix)}})
        await self.call("/v3/auth/user/grant", {"user": user, "role": user})

    async def remove_tenant(self, user: str) -> None:
        if user == ROOT:
            raise ValueError("a tenant cannot be etcd's root user")
        await self.call("/v3/auth/user/delete", {"name": user}, ok=[NOT_FOUND])
        await self.call("/v3/auth/role/delete", {"role": user}, ok=[NOT_FOUND])

    async def user_exists(self, user: str) -> bool:
        return bool(await self.call("/v3/auth/user/get", {"name": user}, ok=[NOT_FOUND]))

    async def count(self, prefix: str) -> int:
        found = await self.call("/v3/kv/range", {**prefix_range(prefix), "count_only": True})
        return int(found.get("count", 0))

    async def delete_prefix(self, prefix: str) -> int:
        """Delete every key under `prefix`; return how many went."""
        return int((await self.call("/v3/kv/deleterange", prefix_range(prefix))).get("deleted", 0))

    async def range_page(
        self, prefix: str, *, after: bytes | None, revision: int, limit: int,
    ) -> tuple[list[tuple[bytes, bytes]], bool, int]:
        """Up to `limit` pairs under `prefix` past key `after`, read at `revision` (0: now).

        Returns (pairs, more, revision read): passing that revision to the next call makes the
        pages one consistent snapshot (etcd answers "compacted" once it is too old).
        """
        body: dict[str, Any] = {**prefix_range(prefix), "limit": limit, "revision": revision}
        if after is not None:
            body["key"] = _b64(after + b"\0")
        found = await self.call("/v3/kv/range", body)
        pairs = [(base64.b64decode(kv["key"]), base64.b64decode(kv.get("value", ""))) for kv in found.get("kvs", ())]
        return pairs, bool(found.get("more")), int(found.get("header", {}).get("revision", revision))

    async def put_absent(self, pairs: list[tuple[bytes, bytes]]) -> bool:
        """Write `pairs` in one transaction only if none of their keys exists; False if one did."""
        compare = [{"key": _b64(k), "result": "EQUAL", "target": "CREATE", "create_revision": "0"} for k, _ in pairs]
        success = [{"request_put": {"key": _b64(k), "value": _b64(v)}} for k, v in pairs]
        return bool((await self.call("/v3/kv/txn", {"compare": compare, "success": success})).get("succeeded"))


@contextlib.asynccontextmanager
async def open_gateway(url: str, *, tls: ssl.SSLContext, password: str | None) -> AsyncIterator[Gateway]:
    """A gateway session logged in as root (turning auth on first if it is off).

    `tls` presents the appliance's CN-less client certificate. `password=None` skips the log-in:
    a tenant's dedicated etcd has no users, its TLS client certificate is the whole check.
    Raises GatewayError.
    """
    async with httpx.AsyncClient(base_url=url, verify=tls, trust_env=False, timeout=30.0) as client:
        gateway = Gateway(client)
        if password is not None:
            await gateway.log_in(password)
        yield gateway
