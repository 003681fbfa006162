"""What `POST /start` accepts: a Ramp hook payload whose metadata says what load to send, checked as hostile input.
Every bad body is a `BadRequest` with a reason (answered 400), never another exception."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.loadtest.request import BadRequest, Caps, parse_start

CAPS = Caps(max_rps=50, max_duration=120, max_concurrency=8, max_runs=2, max_timeout=10)
ROUTE = {"header": "x-version", "match": "exact", "value": "v2", "version": "v2"}


def payload(metadata: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
    """A payload as a Ramp pre-step hook sends it for the header step."""
    body: dict[str, Any] = {
        "version": 1, "hook": "load", "type": "pre-step", "rollout": "reviews", "namespace": "shop",
        "service": "reviews", "target": "v2", "phase": "Pending", "step": 1, "steps": 4,
        "weights": {"v1": 100, "v2": 0}, "header_routes": [ROUTE], "reason": "starting step 1/4",
        "metadata": {"url": "http://reviews.shop:9080/"} if metadata is None else metadata,
        "at": "2026-11-26T10:00:00Z", "a_field_from_a_newer_ramp": {"x": [1, 2]},
    }  # fmt: skip
    body.update(fields)
    return body


def parse(body: dict[str, Any] | bytes, caps: Caps = CAPS) -> Any:
    return parse_start(body if isinstance(body, bytes) else json.dumps(body).encode(), caps)


def test_defaults_and_the_header_route_to_the_target() -> None:
    request = parse(payload())
    assert (request.rollout, request.namespace, request.step, request.target) == ("reviews", "shop", 1, "v2")
    assert request.key == ("shop", "reviews", 1)
    assert request.header == ("x-version", "v2")  # the step's header route to the target, from the payload
    assert (request.rps, request.duration, request.concurrency, request.timeout) == (10, 60, 4, 5)
    assert request.max_requests == 600 and request.method == "GET" and request.host is None


def test_metadata_as_a_specs_string_map() -> None:
    request = parse(payload({
        "url": "http://127.0.0.1:8080/api/version", "rps": "25", "duration": "90s", "concurrency": "3",
        "timeout": "500ms", "requests": "100", "header": "X-Canary: yes please", "host": "reviews.shop.svc:80",
        "method": "head",
    }))  # fmt: skip
    assert request.header == ("x-canary", "yes please")  # names are case-insensitive; Istio matches lowercase
    assert (request.rps, request.duration, request.concurrency, request.timeout) == (25, 90, 3, 0.5)
    assert (request.max_requests, request.host, request.method) == (100, "reviews.shop.svc:80", "HEAD")


def test_a_prefix_route_sends_its_value_and_none_sends_no_header() -> None:
    prefix = {**ROUTE, "match": "prefix", "value": "canary"}
    other = {"header": "x-version", "match": "exact", "value": "v3", "version": "v3"}
    assert parse(payload(header_routes=[other, prefix])).header == ("x-version", "canary")
    assert parse(payload({"url": "http://a/", "header": "none"}, header_routes=[])).header is None


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"\xff\xfe", "not JSON"),
        (b"[" * 60_000, "not JSON"),  # nesting deeper than the parser's recursion limit
        (b'{"rollout": 1' + b"1" * 5000 + b"}", "not JSON"),  # an integer longer than Python accepts
        (b"[]", "must be a JSON object"),
        (b"x" * 70_000, "larger than"),
        (payload(version=2), "unsupported payload version"),
        (payload(version=True), "unsupported payload version"),
        (payload(metadata=["url"]), "metadata must be an object"),
        (payload({}), "metadata.url is required"),
        (payload({"url": "https://reviews/"}), "must be http://"),
        (payload({"url": "ftp://reviews/"}), "http:// or https://"),
        (payload({"url": "http://user:pw@reviews/"}), "must not carry credentials"),
        (payload({"url": "http://reviews/\r\nX-Injected: 1"}), "control characters"),
        (payload({"url": "http://a/", "rps": 51}), "above this load tester's limit of 50"),
        (payload({"url": "http://a/", "rps": "nan"}), "finite number > 0"),
        (payload({"url": "http://a/", "rps": 0}), "finite number > 0"),
        (payload({"url": "http://a/", "rps": True}), "must be a number"),
        (payload({"url": "http://a/", "rps": {"a": 1}}), "must be a number"),
        (payload({"url": "http://a/", "duration": "1h"}), "above the limit of 2m"),
        (payload({"url": "http://a/", "duration": "-1s"}), "metadata.duration"),
        (payload({"url": "http://a/", "concurrency": 2.5}), "whole number"),
        (payload({"url": "http://a/", "concurrency": 9}), "limit of 8"),
        (payload({"url": "http://a/", "timeout": "11s"}), "above the limit"),
        (payload({"url": "http://a/", "requests": 601}), "metadata.requests"),
        (payload({"url": "http://a/", "method": "POST"}), "metadata.method must be one of GET, HEAD, OPTIONS"),
        (payload({"url": "http://a/", "rsp": "20"}), "unknown metadata keys ['rsp']"),
        (payload({"url": "http://a/", "header": "x-version v2"}), "'name: value'"),
        (payload({"url": "http://a/", "header": "x-version: v2\r\nx-admin: 1"}), "control character"),
        (payload({"url": "http://a/", "header": "host: evil"}), "host"),
        (payload({"url": "http://a/", "host": "Evil Host"}), "metadata.host"),
        (payload(header_routes=[{**ROUTE, "match": "regex", "value": "v2|v3"}]), "set metadata.header"),
        (payload(header_routes=[]), "no header route to the target v2"),
        (payload(header_routes="x"), "header_routes must be a list"),
        (payload(rollout=None), "rollout must be"),
        (payload(rollout="../etc"), "rollout must be"),
        (payload(step=True), "step must be"),
        (payload(step=-1), "step must be"),
    ],
)
def test_bad_input_is_refused_with_the_reason(body: dict[str, Any] | bytes, reason: str) -> None:
    with pytest.raises(BadRequest) as refused:
        parse(body)
    assert reason in str(refused.value)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)
KEYS = st.sampled_from(["url", "rps", "duration", "concurrency", "timeout", "requests", "header", "host", "method"])


@settings(max_examples=300, deadline=None)
@given(
    top=st.dictionaries(st.sampled_from(["rollout", "step", "target", "header_routes", "version"]), JSON),
    metadata=st.dictionaries(KEYS, JSON | st.text(max_size=30)),
)
def test_arbitrary_payloads_start_a_bounded_run_or_are_refused(top: dict[str, Any], metadata: dict[str, Any]) -> None:
    body = payload({"url": "http://a/", **metadata})
    body.update(top)
    try:
        request = parse(json.dumps(body).encode())
    except BadRequest:
        return
    assert 0 < request.rps <= CAPS.max_rps and 0 < request.duration <= CAPS.max_duration
    assert 1 <= request.concurrency <= CAPS.max_concurrency and 0 < request.timeout <= CAPS.max_timeout
    assert 1 <= request.max_requests <= CAPS.max_requests and request.url.startswith("http://")
