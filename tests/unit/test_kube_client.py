"""Tests for client-side logic of appliance.kube.client over httpx.MockTransport.

These check only what the client does with requests and responses it builds or parses:
paths, parameters, bodies, pagination, error mapping and watch stream framing. Whether
anything works against a real apiserver is for tests/integration.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import trio
import trio.testing

from appliance.kube import client as kclient
from appliance.kube import errors, ratelimit, resources
from appliance.kube.client import ApiClient, _BearerToken
from appliance.kube.creds import Credentials

Handler = Callable[[httpx.Request], httpx.Response]


def make_client(handler: Handler, *, token: str | None = None) -> ApiClient:
    http = httpx.AsyncClient(
        transport=httpx.MockTransport(handler),
        base_url="https://apiserver:6443",
        auth=_BearerToken(token, None) if token else None,
    )
    return ApiClient(
        http,
        creds=Credentials(server="https://apiserver:6443", token=token),
        limiter=ratelimit.RateLimiter(qps=math.inf, burst=1),
    )


def json_response(status: int, body: object) -> httpx.Response:
    return httpx.Response(status, content=msgspec.json.encode(body))


def status(code: int, reason: str) -> dict[str, object]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "reason": reason,
        "code": code,
    }


async def test_get_path_and_not_found() -> None:
    """get builds the object path and a 404 Status becomes errors.NotFound."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return json_response(404, status(404, "NotFound"))

    client = make_client(handler)
    with pytest.raises(errors.NotFound):
        await client.get(resources.PODS, "p", namespace="ns")
    assert "/api/v1/namespaces/ns/pods/p" == seen[0].url.path
    assert "GET" == seen[0].method


async def test_bearer_token_header() -> None:
    """The bearer token goes into the Authorization header."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return json_response(200, {"gitVersion": "v1.37.2"})

    assert {"gitVersion": "v1.37.2"} == await make_client(handler, token="tok").server_version()
    assert "Bearer tok" == seen[0].headers["authorization"]


async def test_namespaced_single_object_needs_namespace() -> None:
    """Single-object verbs on a namespaced resource refuse to run without a namespace."""
    client = make_client(lambda request: json_response(200, {}))
    with pytest.raises(ValueError, match="namespace"):
        await client.get(resources.PODS, "p")
    with pytest.raises(ValueError, match="namespace"):
        await client.create(resources.PODS, {"metadata": {"name": "p"}})


async def test_list_follows_continue_and_fills_type_meta() -> None:
    """list walks every page, keeps the last resourceVersion and fills apiVersion/kind."""
    seen: list[httpx.QueryParams] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.params)
        if "continue" not in request.url.params:
            return json_response(
                200,
                {
                    "metadata": {"resourceVersion": "10", "continue": "tok1"},
                    "items": [{"metadata": {"name": "a"}}],
                },
            )
        return json_response(
            200, {"metadata": {"resourceVersion": "10"}, "items": [{"metadata": {"name": "b"}}]}
        )

    listing = await make_client(handler).list(
        resources.PODS, namespace="ns", label_selector="app=x", limit=1
    )
    assert "10" == listing.resource_version
    assert [
        {"metadata": {"name": "a"}, "apiVersion": "v1", "kind": "Pod"},
        {"metadata": {"name": "b"}, "apiVersion": "v1", "kind": "Pod"},
    ] == listing.items
    assert [
        {"labelSelector": "app=x", "limit": "1"},
        {"labelSelector": "app=x", "limit": "1", "continue": "tok1"},
    ] == [dict(params) for params in seen]


async def test_list_raw_restarts_when_continue_expires() -> None:
    """An expired continue token restarts the list as one unpaginated request."""
    seen: list[dict[str, str]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        params = dict(request.url.params)
        seen.append(params)
        if params.get("continue"):
            return json_response(410, status(410, "Expired"))
        if "limit" in params:
            return json_response(
                200,
                {"metadata": {"resourceVersion": "1", "continue": "old"}, "items": [{"a": 1}]},
            )
        return json_response(
            200, {"metadata": {"resourceVersion": "2"}, "items": [{"a": 1}, {"b": 2}]}
        )

    listing = await make_client(handler).list_raw(resources.NODES)
    assert "2" == listing.resource_version
    assert [
        {"apiVersion": "v1", "kind": "Node", "a": 1},
        {"apiVersion": "v1", "kind": "Node", "b": 2},
    ] == [msgspec.json.decode(item) for item in listing.items]
    assert [{"limit": "500"}, {"limit": "500", "continue": "old"}, {}] == seen


async def test_list_gone_on_first_page_propagates() -> None:
    """A 410 on the first page is not retried: the caller must relist differently."""
    client = make_client(lambda request: json_response(410, status(410, "Expired")))
    with pytest.raises(errors.Gone):
        await client.list(resources.PODS)


async def test_create_uses_body_namespace_and_maps_conflicts() -> None:
    """create POSTs to the body's namespace; 409 AlreadyExists keeps its own class."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return json_response(409, status(409, "AlreadyExists"))

    body = {"metadata": {"name": "cm", "namespace": "t1"}, "data": {"k": "v"}}
    with pytest.raises(errors.AlreadyExists):
        await make_client(handler).create(resources.CONFIGMAPS, body, field_manager="syncer")
    assert "/api/v1/namespaces/t1/configmaps" == seen[0].url.path
    assert "syncer" == seen[0].url.params["fieldManager"]
    assert "application/json" == seen[0].headers["content-type"]
    assert body == msgspec.json.decode(seen[0].content)


async def test_create_subresource_uses_body_name() -> None:
    """A subresource create (pods/binding) targets the object named in the body."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return json_response(201, {"kind": "Status", "status": "Success"})

    binding = {
        "metadata": {"name": "p", "namespace": "ns"},
        "target": {"kind": "Node", "name": "n"},
    }
    await make_client(handler).create(resources.PODS, binding, subresource="binding")
    assert "/api/v1/namespaces/ns/pods/p/binding" == seen[0].url.path


async def test_update_status_puts_to_status() -> None:
    """update_status PUTs the whole body to the status subresource; 409 is Conflict."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return json_response(409, status(409, "Conflict"))

    body = {"metadata": {"name": "vc", "namespace": "t", "resourceVersion": "3"}, "status": {}}
    with pytest.raises(errors.Conflict):
        await make_client(handler).update_status(resources.VIRTUALCLUSTERS, body)
    assert "PUT" == seen[0].method
    assert (
        "/apis/tenancy.x-k8s.io/v1alpha1/namespaces/t/virtualclusters/vc/status" == seen[0].url.path
    )


@pytest.mark.parametrize(
    ("patch_type", "content_type"),
    [
        ("merge", "application/merge-patch+json"),
        ("strategic", "application/strategic-merge-patch+json"),
        ("json", "application/json-patch+json"),
        ("apply", "application/apply-patch+yaml"),
    ],
)
async def test_patch_content_types(patch_type: Any, content_type: str) -> None:
    """Each patch type is sent with its own content type."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return json_response(200, {"metadata": {"name": "p"}})

    await make_client(handler).patch(
        resources.PODS,
        "p",
        {"metadata": {"labels": {"a": "b"}}},
        namespace="ns",
        patch_type=patch_type,
        field_manager="vc",
    )
    assert content_type == seen[0].headers["content-type"]
    assert "PATCH" == seen[0].method


async def test_apply_force_and_validation() -> None:
    """Server-side apply needs a field manager; force is sent only for apply."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return json_response(200, {})

    client = make_client(handler)
    with pytest.raises(ValueError, match="field_manager"):
        await client.patch(resources.PODS, "p", {}, namespace="ns", patch_type="apply")
    with pytest.raises(ValueError, match="force"):
        await client.patch(resources.PODS, "p", {}, namespace="ns", force=True)
    await client.patch(
        resources.PODS, "p", {}, namespace="ns", patch_type="apply", field_manager="m", force=True
    )
    assert {"fieldManager": "m", "force": "true"} == dict(seen[0].url.params)


async def test_delete_sends_preconditions() -> None:
    """uid and resource_version become DeleteOptions.preconditions in the body."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return json_response(200, {"kind": "Status", "status": "Success"})

    await make_client(handler).delete(
        resources.PODS,
        "p",
        namespace="ns",
        grace_period_seconds=0,
        uid="u-1",
        resource_version="7",
        propagation_policy="Background",
    )
    assert {
        "apiVersion": "v1",
        "kind": "DeleteOptions",
        "gracePeriodSeconds": 0,
        "propagationPolicy": "Background",
        "preconditions": {"uid": "u-1", "resourceVersion": "7"},
    } == msgspec.json.decode(seen[0].content)


async def test_delete_without_options_has_no_body() -> None:
    """A plain delete sends no body."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return json_response(200, {})

    await make_client(handler).delete(resources.NAMESPACES, "t1")
    assert b"" == seen[0].content
    assert "/api/v1/namespaces/t1" == seen[0].url.path


async def test_delete_collection() -> None:
    """delete_collection DELETEs the namespace's collection with the selector."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return json_response(200, {"kind": "PodList", "items": []})

    await make_client(handler).delete_collection(
        resources.PODS, namespace="ns", label_selector="a=b"
    )
    assert ("DELETE", "/api/v1/namespaces/ns/pods", "a=b") == (
        seen[0].method,
        seen[0].url.path,
        seen[0].url.params["labelSelector"],
    )


async def test_request_escape_hatch_maps_errors() -> None:
    """request() encodes JSON and still raises typed errors."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return json_response(403, status(403, "Forbidden"))

    with pytest.raises(errors.Forbidden):
        await make_client(handler).request("POST", "/apis/x/v1/things", json={"a": 1})
    assert b'{"a":1}' == seen[0].content


async def test_transport_failure_is_mapped() -> None:
    """A connection failure surfaces as errors.TransportError."""

    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    with pytest.raises(errors.TransportError):
        await make_client(handler).get(resources.NODES, "n")


async def test_undecodable_body_is_transport_error() -> None:
    """A 200 whose body is not JSON is a TransportError."""
    client = make_client(lambda request: httpx.Response(200, content=b"<html>"))
    with pytest.raises(errors.TransportError):
        await client.get(resources.NODES, "n")


# -- watch framing ------------------------------------------------------------------


def event_line(event_type: str, name: str, rv: str) -> bytes:
    obj = {
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": {"name": name, "namespace": "ns", "resourceVersion": rv},
    }
    return msgspec.json.encode({"type": event_type, "object": obj}) + b"\n"


def streaming(chunks: list[bytes], *, then_hang: bool = False) -> Handler:
    seen: list[httpx.Request] = []

    async def body() -> AsyncIterator[bytes]:
        for chunk in chunks:
            yield chunk
        if then_hang:
            await trio.sleep_forever()

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=body())

    handler.seen = seen  # type: ignore[attr-defined]
    return handler


async def collect(client: ApiClient, **kwargs: Any) -> list[tuple[str, str, str]]:
    events = []
    async for event in client.watch_raw(
        resources.PODS, namespace="ns", resource_version="5", **kwargs
    ):
        events.append((event.type, event.name, event.resource_version))
    return events


async def test_watch_reassembles_split_lines() -> None:
    """Events split across chunks, or several in one chunk, come out whole and in order."""
    stream = (
        event_line("ADDED", "a", "6")
        + event_line("MODIFIED", "a", "7")
        + event_line("DELETED", "a", "8")
    )
    chunks = [stream[:10], stream[10:150], stream[150:151], stream[151:]]
    handler = streaming(chunks)
    got = await collect(make_client(handler))
    assert [("ADDED", "a", "6"), ("MODIFIED", "a", "7"), ("DELETED", "a", "8")] == got
    params = dict(handler.seen[0].url.params)  # type: ignore[attr-defined]
    assert {
        "watch": "true",
        "resourceVersion": "5",
        "allowWatchBookmarks": "true",
        "timeoutSeconds": "300",
    } == params
    assert None is handler.seen[0].extensions["timeout"]["read"]  # type: ignore[attr-defined]


async def test_watch_last_line_without_newline() -> None:
    """A final event without a trailing newline is still delivered."""
    got = await collect(make_client(streaming([event_line("ADDED", "a", "6").rstrip(b"\n")])))
    assert [("ADDED", "a", "6")] == got


async def test_watch_bookmark_then_error_410() -> None:
    """Bookmarks are yielded; an ERROR 410 event ends the stream with errors.Gone."""
    bookmark = {"kind": "Pod", "apiVersion": "v1", "metadata": {"resourceVersion": "99"}}
    lines = [
        msgspec.json.encode({"type": "BOOKMARK", "object": bookmark}) + b"\n",
        msgspec.json.encode({"type": "ERROR", "object": status(410, "Expired")}) + b"\n",
    ]
    events: list[str] = []

    async def consume() -> None:
        async for event in make_client(streaming(lines)).watch_raw(
            resources.PODS, resource_version="5"
        ):
            events.append(event.resource_version)

    with pytest.raises(errors.Gone):
        await consume()
    assert ["99"] == events


async def test_watch_http_410() -> None:
    """An HTTP 410 answer to the watch request raises errors.Gone."""
    client = make_client(lambda request: json_response(410, status(410, "Expired")))
    with pytest.raises(errors.Gone):
        await collect(client)


async def test_watch_decoded_objects() -> None:
    """watch() yields the same events with objects decoded to dicts."""
    client = make_client(streaming([event_line("ADDED", "a", "6")]))
    events = [event async for event in client.watch(resources.PODS, resource_version="5")]
    assert 1 == len(events)
    assert ("ADDED", "6", "a") == (
        events[0].type,
        events[0].resource_version,
        events[0].object["metadata"]["name"],
    )


async def test_watch_idle_deadline(autojump_clock: trio.testing.MockClock) -> None:
    """A stream that goes silent raises TransportError after idle_timeout, restarted per chunk."""
    client = make_client(streaming([event_line("ADDED", "a", "6")], then_hang=True))
    start = trio.current_time()
    events: list[str] = []

    async def consume() -> None:
        async for event in client.watch_raw(resources.PODS, resource_version="5", idle_timeout=7):
            events.append(event.name)

    with pytest.raises(errors.TransportError, match="no data"):
        await consume()
    assert ["a"] == events
    assert 7 == pytest.approx(trio.current_time() - start)


async def test_watch_without_response_head_times_out(autojump_clock: trio.testing.MockClock) -> None:
    """A watch request that is never answered fails after the client's timeout (not never)."""

    async def never(request: httpx.Request) -> httpx.Response:
        await trio.sleep_forever()

    client = make_client(never)  # type: ignore[arg-type]  # MockTransport takes async handlers too
    start = trio.current_time()
    with pytest.raises(errors.TransportError, match="no response within 30 s"):
        async for _ in client.watch_raw(resources.PODS, resource_version="5", idle_timeout=300):
            pass
    assert 30 == pytest.approx(trio.current_time() - start)


async def test_token_file_reread(tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    """A token file is re-read once a minute so rotated service-account tokens are picked up."""
    token_file = tmp_path / "token"
    token_file.write_text("first")
    auth = _BearerToken(None, token_file)

    async def header() -> str:
        flow = auth.async_auth_flow(httpx.Request("GET", "https://h/"))
        request = await anext(flow)
        await flow.aclose()
        return request.headers["authorization"]

    assert "Bearer first" == await header()
    token_file.write_text("second")
    assert "Bearer first" == await header()
    autojump_clock.jump(61)
    assert "Bearer second" == await header()


async def test_watch_closed_early_releases_stream() -> None:
    """Closing the watch after one event ends the body iterator without GC warnings."""
    chunks = [event_line("ADDED", "a", "6"), event_line("ADDED", "b", "7")]
    client = make_client(streaming(chunks, then_hang=True))
    stream = client.watch_raw(resources.PODS, resource_version="5")
    async with contextlib.aclosing(stream) as events:
        async for event in events:
            assert "a" == event.name
            break


async def test_query_values_are_percent_encoded_and_headers_and_extensions_kept() -> None:
    """Requests built by the client itself: selectors with spaces, commas, '!' and '=' reach
    the server intact; the client's default headers and per-client extensions ride along."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return json_response(200, {"kind": "PodList", "items": [], "metadata": {"resourceVersion": "1"}})

    http = kclient._ApiHttp(transport=httpx.MockTransport(handler), base_url="https://apiserver:6443/",
                            headers={"User-Agent": "ua-test"})
    api = ApiClient(http, creds=Credentials(server="https://apiserver:6443", tls_server_name="kubernetes"),
                    limiter=ratelimit.RateLimiter(qps=math.inf, burst=1))
    selector = "app in (a, b),tier!=db,x=y&z"
    await api.list(resources.PODS, namespace="ns", label_selector=selector)
    (request,) = seen
    assert request.url.path == "/api/v1/namespaces/ns/pods"
    assert request.url.params["labelSelector"] == selector
    assert b"+" not in request.url.query  # spaces as %20: '+' would be a literal plus elsewhere
    assert request.headers["User-Agent"] == "ua-test"
    assert request.extensions["sni_hostname"] == "kubernetes"
    assert request.extensions["timeout"] == http.timeout.as_dict()


async def test_the_client_keeps_no_cookies() -> None:
    """A Set-Cookie from the server is not stored nor sent back (the API uses none)."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, headers={"Set-Cookie": "session=abc; Path=/"}, content=b'{"kind":"Pod"}')

    http = kclient._ApiHttp(transport=httpx.MockTransport(handler), base_url="https://apiserver:6443")
    api = ApiClient(http, creds=Credentials(server="https://apiserver:6443"),
                    limiter=ratelimit.RateLimiter(qps=math.inf, burst=1))
    for _ in range(2):
        await api.get(resources.PODS, "p", namespace="ns")
    assert "cookie" not in seen[1].headers
    assert not http.cookies
    with pytest.raises(ValueError, match="no cookies"):
        http.cookies = {"a": "b"}


async def test_a_header_given_per_request_replaces_the_clients_default() -> None:
    """Per-request headers override the client's defaults whatever their case (one Accept)."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=b"plain")

    await make_client(handler).request("GET", "/logs", headers={"Accept": "text/plain"})
    assert seen[0].headers.get_list("accept") == ["text/plain"]


@pytest.mark.parametrize("base", ["https://super:6443", "https://super:443", "https://super:6443/prefix/"])
@pytest.mark.parametrize(("path", "query"), [
    pytest.param("/api/v1/namespaces/ns/pods/web-0/status", "fieldManager=syncer", id="plain"),
    pytest.param("/apis/rbac.authorization.k8s.io/v1/clusterroles/system:controller:x", "", id="rbac-colons"),
    pytest.param("/api/v1/pods", "labelSelector=a%3Db%2Cc%20in%20%28x%29&limit=500", id="escaped-query"),
    pytest.param("/api/v1/namespaces/ns/configmaps/odd name#1", "", id="needs-escaping"),
])
def test_urls_built_without_a_parse_equal_parsed_ones(base: str, path: str, query: str,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The shortcut that skips httpx's URL validation gives the URL httpx would parse, and the
    transport sends the same request line; names that need escaping take httpx's own parse."""
    client = ApiClient(httpx.AsyncClient(base_url=base), creds=Credentials(server=base),
                       limiter=ratelimit.RateLimiter(qps=math.inf, burst=1))
    parses: list[str] = []
    real_parse = httpx._urls.urlparse  # type: ignore[attr-defined]
    monkeypatch.setattr(httpx._urls, "urlparse", lambda *a, **kw: parses.append(a[0]) or real_parse(*a, **kw))
    url = client._url(path, query)
    assert bool(parses) == (" " in path)  # only the name that needs escaping was parsed
    monkeypatch.undo()
    parsed = httpx.URL(base.rstrip("/") + path + ("?" + query if query else ""))
    assert (str(url), url.raw_path, url.host, url.port, url.scheme) == \
        (str(parsed), parsed.raw_path, parsed.host, parsed.port, parsed.scheme)
    assert url == parsed
