"""The REST client: one `httpx.AsyncClient` per apiserver, typed errors, rate limit, watches.

`open_client(creds)` owns the connection pool for one set of credentials (a tenant or the
super cluster); `ApiClient` speaks the Kubernetes verbs for any `Resource`, objects as plain
dicts plus raw-bytes variants for caches. It never retries: callers classify errors
(STYLE rule 22) and informers reconnect. Every request takes a rate-limiter token.
HTTP/1.1 only: each watch holds a pooled connection, so size `max_connections` for them.
TLS goes through `transport` (reads hand over every record already received).
"""

from __future__ import annotations

import builtins
import contextlib
import dataclasses
import logging
import re
import ssl
import urllib.parse
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

import httpx
import msgspec
import trio

from appliance.kube import creds as creds_mod
from appliance.kube import errors, ratelimit, transport, wire
from appliance.kube.creds import Credentials
from appliance.kube.resources import Resource
from appliance.kube.wire import ObjectList, RawObjectList, RawWatchEvent, WatchEvent

__all__ = [
    "ApiClient",
    "ObjectList",
    "PatchType",
    "RawObjectList",
    "RawWatchEvent",
    "WatchEvent",
    "open_client",
]

logger = logging.getLogger(__name__)

JsonObject = dict[str, Any]
PatchType = Literal["merge", "strategic", "json", "apply"]

_PATCH_CONTENT_TYPES: dict[str, str] = {
    "merge": "application/merge-patch+json",
    "strategic": "application/strategic-merge-patch+json",
    "json": "application/json-patch+json",
    "apply": "application/apply-patch+yaml",  # JSON is YAML
}
_JSON = "application/json"
#: Paths and queries that `ApiClient._url` may join without httpx's validation: unreserved
#: characters, path separators and the `:`/`@` RBAC names use; percent escapes in queries.
_PLAIN_PATH = re.compile(r"/[A-Za-z0-9._~:@/-]*")
_PLAIN_QUERY = re.compile(r"[A-Za-z0-9._~%=&-]*")
_ENCODER = msgspec.json.Encoder()

# etcd refuses values above 1.5 MiB by default; JSON can be a few times larger than that.
MAX_WATCH_EVENT_BYTES = 16 * 1024 * 1024
# Projected service-account tokens rotate hourly; client-go re-reads them every minute.
TOKEN_REREAD_SECONDS = 60.0

_T = TypeVar("_T")

# Watch theory of operation
# -------------------------
# One GET with watch=true&allowWatchBookmarks=true, with no read timeout (the server ends
# the stream after timeoutSeconds) but with an inactivity deadline that restarts whenever
# bytes arrive, so a half-open connection surfaces as a TransportError instead of a silent
# stall. The response head must arrive within the client's ordinary timeout (an apiserver
# sends it as soon as the watch is set up): without that bound, a watch request that is
# never answered would hang forever. The deadline scope wraps only the wait for the next
# chunk, never a `yield`: a cancel scope must not stay open across a yield to the consumer.
# `wire.LineSplitter` cuts the body into newline-terminated JSON envelopes;
# `wire.decode_event` decodes them and raises errors.Gone for an ERROR 410. However the
# stream stops (end, error, the consumer closing the generator), `_discard` ends httpx's
# body iterator, so no half-consumed httpx generator is left to the garbage collector
# (trio warns about those).


class _BearerToken(httpx.Auth):
    """Adds `Authorization: Bearer`, re-reading `token_file` at most once a minute."""

    def __init__(self, token: str | None, token_file: Path | None) -> None:
        self._token = token
        self._token_file = token_file
        self._next_read: float | None = None

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        if self._token_file is not None:
            now = trio.current_time()
            if self._next_read is None and self._token:
                self._next_read = now + TOKEN_REREAD_SECONDS
            elif self._next_read is None or now >= self._next_read:
                # Set before awaiting so concurrent requests do not all re-read.
                self._next_read = now + TOKEN_REREAD_SECONDS
                await self._reread(self._token_file)
        if self._token:
            request.headers["Authorization"] = f"Bearer {self._token}"
        yield request

    async def _reread(self, path: Path) -> None:
        try:
            self._token = await trio.to_thread.run_sync(
                creds_mod.read_token_file, path, abandon_on_cancel=True
            )
        except creds_mod.KubeconfigError as exc:
            if self._token is None:
                raise
            logger.warning("keeping the previous bearer token: %s", exc)


def _params(**values: str | int | None) -> dict[str, str]:
    """Query parameters with unset values dropped."""
    return {k: str(v) for k, v in values.items() if v is not None}


def _name_of(body: JsonObject) -> str:
    name = (body.get("metadata") or {}).get("name")
    if not name:
        raise ValueError("body has no metadata.name")
    return str(name)


class _NoCookies(httpx.Cookies):
    """A jar that keeps nothing: the Kubernetes API sets no cookies, and looking for them in
    every response cost httpx ~20 µs of CPU per request."""

    def extract_cookies(self, response: httpx.Response) -> None:
        return None


class _ApiHttp(httpx.AsyncClient):
    """httpx's client without cookies (see `_NoCookies`)."""

    _no_cookies = _NoCookies()

    @property
    def cookies(self) -> httpx.Cookies:
        return self._no_cookies

    @cookies.setter
    def cookies(self, cookies: Any) -> None:
        if cookies:
            raise ValueError("this client keeps no cookies")


class ApiClient:
    """Kubernetes verbs over one HTTP connection pool; build it with `open_client`.

    Namespaced resources need a namespace for single-object verbs: the `namespace`
    argument, or for create/update the body's `metadata.namespace`.
    """

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        creds: Credentials,
        limiter: ratelimit.RateLimiter,
        connect_timeout: float = 30.0,
        on_response: Callable[[str, int], None] | None = None,
    ) -> None:
        self.creds = creds
        #: Called with (method, status) after every answered non-watch request: a counter of
        #: requests by verb without a dependency on the metrics module.
        self._on_response = on_response
        self._http = http
        self._limiter = limiter
        # httpx wants every field or a default; read=None because watches are long polls.
        self._watch_timeout = httpx.Timeout(connect_timeout, read=None)
        self._watch_head_timeout = connect_timeout
        self._extensions: dict[str, Any] = {}
        self._ssl: ssl.SSLContext | None = None
        if creds.tls_server_name:
            self._extensions["sni_hostname"] = creds.tls_server_name
        # Ordinary requests are built here and handed to `http.send`: `http.request` would
        # merge base URL, headers, cookies and params anew on each call (~0.1 ms of CPU per
        # request, a fifth of the syncer's cost per Pod). The client's headers and timeout
        # are read once; the auth flow and everything below it stay the client's.
        self._base = str(http.base_url).rstrip("/")
        self._base_ref = getattr(httpx.URL(self._base), "_uri_reference", None)
        self._headers = dict(http.headers)
        self._request_extensions = {**self._extensions, "timeout": http.timeout.as_dict()}

    async def renew_client_certificate(self, cert_pem: bytes, key_pem: bytes) -> None:
        """Present a renewed client certificate (same CA) on every connection opened from now on.

        Open connections keep the certificate they were made with until they close; the
        server checks a client certificate only at the handshake.
        """
        if self._ssl is None:
            raise RuntimeError("this client was not built by open_client")
        ctx = self._ssl
        await trio.to_thread.run_sync(lambda: creds_mod.load_cert_chain_pem(ctx, cert_pem=cert_pem, key_pem=key_pem))
        self.creds = dataclasses.replace(self.creds, client_cert_pem=cert_pem, client_key_pem=key_pem)

    # -- transport --------------------------------------------------------------------

    async def _send(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        await self._limiter.acquire()
        query = urllib.parse.urlencode(params, quote_via=urllib.parse.quote) if params else ""
        try:  # as errors.map_exceptions, without a context manager per request
            request = httpx.Request(method, self._url(path, query), content=content, extensions=self._request_extensions,
                                    headers={**self._headers, **{k.lower(): v for k, v in headers.items()}}
                                    if headers else self._headers)  # names case-insensitive, as httpx merges
            response = await self._http.send(request)
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise errors.transport_error(exc) from exc
        logger.debug("%s %s -> %d", method, path, response.status_code)
        if self._on_response is not None:
            self._on_response(method, response.status_code)
        if response.status_code >= 400:
            raise errors.from_response(response.status_code, response.content, response.headers)
        return response

    def _url(self, path: str, query: str) -> httpx.URL:
        """The URL of `path` and `query` (already percent-encoded) on the client's server.

        httpx validates a URL string character by character (~18 µs, a tenth of a request's
        CPU); a path and query of only unreserved characters need none of it, so their URL is
        the base URL's parsed form with path and query replaced. Anything else, and an httpx
        without that parsed form, takes the ordinary parse.
        """
        ref = self._base_ref
        if ref is not None and _PLAIN_PATH.fullmatch(path) and _PLAIN_QUERY.fullmatch(query):
            url = httpx.URL.__new__(httpx.URL)
            url._uri_reference = ref._replace(path=ref.path.rstrip("/") + path, query=query or None)
            return url
        return httpx.URL(self._base + path + ("?" + query if query else ""))

    async def _call(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: object = None,
        content_type: str = _JSON,
    ) -> JsonObject:
        content = None if body is None else _ENCODER.encode(body)
        headers = {"Content-Type": content_type} if content is not None else None
        response = await self._send(method, path, params=params, content=content, headers=headers)
        return wire.decode_object(response.content)

    @staticmethod
    def _object_path(
        res: Resource, *, namespace: str | None, name: str, subresource: str | None = None
    ) -> str:
        if res.namespaced and not namespace:
            raise ValueError(f"{res} is namespaced: a namespace is required")
        return res.path(namespace=namespace, name=name, subresource=subresource)

    @staticmethod
    def _namespace_for(res: Resource, namespace: str | None, body: JsonObject) -> str | None:
        if namespace is not None or not res.namespaced:
            return namespace
        found = (body.get("metadata") or {}).get("namespace")
        if not found:
            raise ValueError(f"{res} is namespaced: pass namespace= or set metadata.namespace")
        return str(found)

    # -- verbs ------------------------------------------------------------------------

    async def get(
        self,
        res: Resource,
        name: str,
        *,
        namespace: str | None = None,
        subresource: str | None = None,
    ) -> JsonObject:
        """GET one object (or one of its subresources, such as `status` or `scale`)."""
        path = self._object_path(res, namespace=namespace, name=name, subresource=subresource)
        return await self._call("GET", path)

    async def list(
        self,
        res: Resource,
        *,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
        limit: int = 500,
    ) -> ObjectList:
        """List all matching objects, following `continue` tokens across pages.

        Items get `apiVersion`/`kind` filled in (list responses omit them). If a continue
        token expires midway (410), the list restarts as one unpaginated request.
        """

        def convert(item: JsonObject) -> JsonObject:
            item.setdefault("apiVersion", res.api_version)
            item.setdefault("kind", res.kind)
            return item

        items, rv = await self._paginate(
            res,
            wire.DICT_PAGE,
            convert,
            namespace=namespace,
            label_selector=label_selector,
            field_selector=field_selector,
            limit=limit,
        )
        return ObjectList(items=items, resource_version=rv)

    async def list_raw(
        self,
        res: Resource,
        *,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
        limit: int = 500,
    ) -> RawObjectList:
        """As `list`, with each object as its own JSON bytes (no dicts are built)."""

        def convert(item: msgspec.Raw) -> bytes:
            return wire.with_type_meta(item, api_version=res.api_version, kind=res.kind)

        items, rv = await self._paginate(
            res,
            wire.RAW_PAGE,
            convert,
            namespace=namespace,
            label_selector=label_selector,
            field_selector=field_selector,
            limit=limit,
        )
        return RawObjectList(items=items, resource_version=rv)

    async def _paginate(
        self,
        res: Resource,
        decoder: msgspec.json.Decoder[Any],
        convert: Callable[[Any], _T],
        *,
        namespace: str | None,
        label_selector: str | None,
        field_selector: str | None,
        limit: int,
    ) -> tuple[builtins.list[_T], str]:
        path = res.path(namespace=namespace)
        items: builtins.list[_T] = []
        token = ""
        while True:
            params = _params(
                labelSelector=label_selector,
                fieldSelector=field_selector,
                limit=limit or None,
                **{"continue": token or None},
            )
            try:
                response = await self._send("GET", path, params=params)
            except errors.Gone:
                if not token:
                    raise
                logger.warning("continue token for %s expired; listing in one request", res)
                items.clear()
                token, limit = "", 0
                continue
            try:
                page = decoder.decode(response.content)
            except msgspec.MsgspecError as exc:
                raise errors.TransportError(f"undecodable list of {res}: {exc}") from exc
            items.extend(convert(item) for item in page.items or ())
            token = page.metadata.continue_
            if not token:
                return items, page.metadata.resourceVersion

    async def create(
        self,
        res: Resource,
        body: JsonObject,
        *,
        namespace: str | None = None,
        subresource: str | None = None,
        field_manager: str | None = None,
        name: str | None = None,
    ) -> JsonObject:
        """POST a new object, or POST to a subresource of `name` (binding, eviction, token).

        For a subresource, `name` defaults to the body's `metadata.name`.
        """
        ns = self._namespace_for(res, namespace, body)
        if subresource is not None:
            path = self._object_path(
                res, namespace=ns, name=name or _name_of(body), subresource=subresource
            )
        else:
            path = res.path(namespace=ns)
        return await self._call("POST", path, params=_params(fieldManager=field_manager), body=body)

    async def update(
        self,
        res: Resource,
        body: JsonObject,
        *,
        namespace: str | None = None,
        subresource: str | None = None,
        field_manager: str | None = None,
    ) -> JsonObject:
        """PUT the whole object named by `body.metadata.name`; 409 Conflict if it is stale."""
        ns = self._namespace_for(res, namespace, body)
        path = self._object_path(res, namespace=ns, name=_name_of(body), subresource=subresource)
        return await self._call("PUT", path, params=_params(fieldManager=field_manager), body=body)

    async def update_status(
        self, res: Resource, body: JsonObject, *, namespace: str | None = None
    ) -> JsonObject:
        """PUT to the `status` subresource."""
        return await self.update(res, body, namespace=namespace, subresource="status")

    async def patch(
        self,
        res: Resource,
        name: str,
        body: JsonObject | builtins.list[Any],
        *,
        namespace: str | None = None,
        subresource: str | None = None,
        patch_type: PatchType = "merge",
        field_manager: str | None = None,
        force: bool = False,
    ) -> JsonObject:
        """PATCH one object; `apply` is server-side apply and needs `field_manager`."""
        if patch_type not in _PATCH_CONTENT_TYPES:
            raise ValueError(f"unknown patch type {patch_type!r}")
        if patch_type == "apply" and not field_manager:
            raise ValueError("server-side apply needs a field_manager")
        if force and patch_type != "apply":
            raise ValueError("force only applies to server-side apply")
        path = self._object_path(res, namespace=namespace, name=name, subresource=subresource)
        params = _params(fieldManager=field_manager, force="true" if force else None)
        return await self._call(
            "PATCH", path, params=params, body=body, content_type=_PATCH_CONTENT_TYPES[patch_type]
        )

    async def delete(
        self,
        res: Resource,
        name: str,
        *,
        namespace: str | None = None,
        grace_period_seconds: int | None = None,
        uid: str | None = None,
        resource_version: str | None = None,
        propagation_policy: str | None = None,
    ) -> JsonObject:
        """DELETE one object; `uid`/`resource_version` become preconditions (409 if unmet).

        Returns the object (still terminating or with finalizers) or a Status.
        """
        options: JsonObject = {}
        if grace_period_seconds is not None:
            options["gracePeriodSeconds"] = grace_period_seconds
        if propagation_policy is not None:
            options["propagationPolicy"] = propagation_policy
        preconditions = {
            k: v for k, v in (("uid", uid), ("resourceVersion", resource_version)) if v is not None
        }
        if preconditions:
            options["preconditions"] = preconditions
        body = {"apiVersion": "v1", "kind": "DeleteOptions", **options} if options else None
        path = self._object_path(res, namespace=namespace, name=name)
        return await self._call("DELETE", path, body=body)

    async def delete_collection(
        self, res: Resource, *, namespace: str | None = None, label_selector: str | None = None
    ) -> None:
        """DELETE every matching object of one namespace (or of a cluster-scoped resource)."""
        if res.namespaced and not namespace:
            raise ValueError(f"{res} is namespaced: delete_collection needs a namespace")
        path = res.path(namespace=namespace)
        await self._send("DELETE", path, params=_params(labelSelector=label_selector))

    async def server_version(self) -> JsonObject:
        """GET /version (gitVersion, major, minor, ...)."""
        return await self._call("GET", "/version")

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        json: object = None,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        """Any request, for what the verbs do not cover; errors mapped, body read."""
        merged = dict(headers or {})
        if json is not None:
            if content is not None:
                raise ValueError("pass json or content, not both")
            content = _ENCODER.encode(json)
            merged.setdefault("Content-Type", _JSON)
        return await self._send(method, path, params=params, content=content, headers=merged)

    # -- watch ------------------------------------------------------------------------

    async def watch(
        self,
        res: Resource,
        *,
        namespace: str | None = None,
        resource_version: str,
        label_selector: str | None = None,
        field_selector: str | None = None,
        timeout_seconds: int = 300,
        idle_timeout: float = 330,
    ) -> AsyncGenerator[WatchEvent, None]:
        """Watch from `resource_version`, yielding events with decoded objects.

        See `watch_raw` for the contract.
        """
        stream = self.watch_raw(
            res,
            namespace=namespace,
            resource_version=resource_version,
            label_selector=label_selector,
            field_selector=field_selector,
            timeout_seconds=timeout_seconds,
            idle_timeout=idle_timeout,
        )
        async with contextlib.aclosing(stream) as events:
            async for event in events:
                yield WatchEvent(
                    type=event.type,
                    object=wire.decode_object(event.object),
                    resource_version=event.resource_version,
                )

    async def watch_raw(
        self,
        res: Resource,
        *,
        namespace: str | None = None,
        resource_version: str,
        label_selector: str | None = None,
        field_selector: str | None = None,
        timeout_seconds: int = 300,
        idle_timeout: float = 330,
    ) -> AsyncGenerator[RawWatchEvent, None]:
        """One watch request, yielding events (BOOKMARKs included) until the server ends it.

        Use it as `async with contextlib.aclosing(client.watch_raw(...)) as events:` so the
        connection is released as soon as the caller stops. Raises errors.Gone when
        `resource_version` is too old (HTTP 410 or an ERROR event with code 410), other
        ApiErrors as mapped, and TransportError if the response head does not come within
        the client's timeout or nothing arrives for `idle_timeout` s.
        """
        path = res.path(namespace=namespace)
        params = _params(
            watch="true",
            resourceVersion=resource_version,
            allowWatchBookmarks="true",
            timeoutSeconds=timeout_seconds,
            labelSelector=label_selector,
            fieldSelector=field_selector,
        )
        await self._limiter.acquire()
        with errors.map_exceptions():
            async with contextlib.AsyncExitStack() as stack:
                response: httpx.Response | None = None
                with trio.move_on_after(self._watch_head_timeout):
                    response = await stack.enter_async_context(self._http.stream(
                        "GET", path, params=params, timeout=self._watch_timeout, extensions=self._extensions
                    ))
                if response is None:
                    raise errors.TransportError(
                        f"watch of {res}: no response within {self._watch_head_timeout:g} s"
                    )
                if response.status_code >= 400:
                    body = await response.aread()
                    raise errors.from_response(response.status_code, body, response.headers)
                logger.debug("watching %s from %s", path, resource_version)
                chunks = response.aiter_bytes()
                lines = wire.LineSplitter(max_line=MAX_WATCH_EVENT_BYTES)
                try:
                    while True:
                        chunk: bytes | None = b""
                        with trio.move_on_after(idle_timeout) as idle:
                            chunk = await anext(chunks, None)
                        if idle.cancelled_caught:
                            raise errors.TransportError(
                                f"watch of {res}: no data for {idle_timeout:g} s"
                            )
                        for line in lines.feed(chunk) if chunk is not None else lines.finish():
                            event = wire.decode_event(line)
                            if event is not None:
                                yield event
                        if chunk is None:
                            return
                finally:
                    await _discard(chunks)


async def _discard(chunks: AsyncIterator[bytes]) -> None:
    """End a partly read httpx body iterator by cancelling its next read.

    httpx's body iterators are chains of async generators; closing only the outer one
    leaves the inner ones to the garbage collector, and trio warns about each. A read in
    an already-cancelled scope instead raises Cancelled at the socket, which unwinds and
    finishes every generator of the chain (and makes httpcore drop the connection).
    """
    with trio.CancelScope() as scope:
        scope.cancel()
        with contextlib.suppress(httpx.HTTPError):
            while await anext(chunks, None) is not None:
                pass


@contextlib.asynccontextmanager
async def open_client(
    creds: Credentials,
    *,
    qps: float = 1000,
    burst: int = 2000,
    timeout: float = 30.0,  # noqa: ASYNC109 (the httpx edge, STYLE rule 15)
    user_agent: str = "vc-appliance",
    max_connections: int = 100,
    on_response: Callable[[str, int], None] | None = None,
) -> AsyncIterator[ApiClient]:
    """Open an `ApiClient` for `creds`; its connections close when the block exits.

    `timeout` bounds connect/read/write/pool waits of ordinary requests (watches have no
    read timeout). `qps`/`burst` feed the client-side token bucket. `on_response(method,
    status)` sees every answered request except watches.
    """
    ssl_ctx = await trio.to_thread.run_sync(creds_mod.ssl_context, creds)
    auth = _BearerToken(creds.token, creds.token_file) if creds.token or creds.token_file else None
    limits = httpx.Limits(
        max_connections=max_connections,
        max_keepalive_connections=max_connections,
        keepalive_expiry=30.0,
    )
    async with _ApiHttp(
        base_url=creds.server,
        transport=transport.transport(ssl_context=ssl_ctx, limits=limits),
        trust_env=False,
        follow_redirects=False,
        timeout=httpx.Timeout(timeout),
        auth=auth,
        headers={"Accept": _JSON, "User-Agent": user_agent},
    ) as http:
        client = ApiClient(
            http,
            creds=creds,
            limiter=ratelimit.RateLimiter(qps=qps, burst=burst),
            connect_timeout=timeout,
            on_response=on_response,
        )
        client._ssl = ssl_ctx
        yield client
