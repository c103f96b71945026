"""The JSON-RPC 2.0 HTTP server (node/rpc_server.py) over real HTTP on 127.0.0.1.

Checks, against a server on port 0 with a fake `call`: a valid call; batches with mixed
results and notifications (and a notification-only batch -> 204); the standard error
codes -32700, -32600, -32601, -32602, -32603 with their ids; the batch-size and
body-size limits; -32001 for a privileged method without the bearer token and success
with it; GET /health; and that the server still answers a good request after each bad one.
"""

import asyncio
import json
from typing import Any

import aiohttp
import pytest

from node.core import INVALID_PARAMS, METHOD_NOT_FOUND, RpcError
from node.rpc_methods import PRIVILEGED
from node.rpc_server import INTERNAL_ERROR, INVALID_REQUEST, PARSE_ERROR, UNAUTHORIZED, RpcServer

TOKEN = "s3cret-cookie"
PRIV = "miner_start"
BODY_MAX = 4096
BATCH_MAX = 8


async def _echo(params: Any) -> Any:
    await asyncio.sleep(0)
    return {"echo": params}


async def _bad_params(params: Any) -> Any:
    raise RpcError(INVALID_PARAMS, "amount must be an integer")


async def _boom(params: Any) -> Any:
    raise ValueError("something broke inside")


async def _priv(params: Any) -> Any:
    return "mining"


FAKE = {"test_echo": _echo, "test_badParams": _bad_params, "test_boom": _boom, PRIV: _priv}


@pytest.fixture
async def rpc():
    assert PRIV in PRIVILEGED
    calls: list[str] = []

    async def call(method: str, params: Any) -> Any:
        calls.append(method)
        fn = FAKE.get(method)
        if fn is None:
            raise RpcError(METHOD_NOT_FOUND, f"unknown method {method}")
        return await fn(params)

    server = RpcServer(call, TOKEN, lambda: {"ok": True, "height": 7}, rpc_body_bytes_max=BODY_MAX, rpc_batch_items_max=BATCH_MAX)
    port = await server.start()
    assert port > 0
    async with aiohttp.ClientSession(base_url=f"http://127.0.0.1:{port}") as session:
        session.calls = calls  # type: ignore[attr-defined]
        yield session
    await server.stop()
    await server.stop()  # idempotent


async def post(session: aiohttp.ClientSession, body: Any, *, raw: bytes | None = None, headers: dict | None = None) -> tuple[int, Any]:
    data = raw if raw is not None else json.dumps(body).encode()
    async with session.post("/", data=data, headers=headers or {}) as resp:
        text = await resp.text()
        if resp.status == 204:
            assert text == ""
            return 204, None
        assert resp.content_type == "application/json"
        return resp.status, json.loads(text)


def req(method: str, params: Any = None, id: Any = 1) -> dict:
    out: dict = {"jsonrpc": "2.0", "method": method, "id": id}
    if params is not None:
        out["params"] = params
    return out


async def assert_still_serving(session: aiohttp.ClientSession) -> None:
    status, body = await post(session, req("test_echo", ["ok"], id="after"))
    assert status == 200
    assert body == {"jsonrpc": "2.0", "result": {"echo": ["ok"]}, "id": "after"}


def err(body: dict, code: int, id: Any) -> str:
    assert set(body) == {"jsonrpc", "error", "id"}
    assert body["jsonrpc"] == "2.0"
    assert body["error"]["code"] == code
    assert body["id"] == id
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return body["error"]["message"]


async def test_single_call(rpc):
    status, body = await post(rpc, req("test_echo", {"a": 1}, id=42))
    assert status == 200
    assert body == {"jsonrpc": "2.0", "result": {"echo": {"a": 1}}, "id": 42}
    status, body = await post(rpc, req("test_echo", id="x"))  # params may be omitted
    assert body == {"jsonrpc": "2.0", "result": {"echo": None}, "id": "x"}


async def test_parse_error(rpc):
    status, body = await post(rpc, None, raw=b'{"jsonrpc": "2.0", "method": ')
    assert status == 200
    err(body, PARSE_ERROR, None)
    status, body = await post(rpc, None, raw=b"\xff\xfe not utf8")
    err(body, PARSE_ERROR, None)
    await assert_still_serving(rpc)


@pytest.mark.parametrize(
    "payload, id",
    [
        (5, None),
        ("text", None),
        ({"method": "test_echo", "id": 3}, 3),  # no "jsonrpc"
        ({"jsonrpc": "1.0", "method": "test_echo", "id": 3}, 3),
        ({"jsonrpc": "2.0", "id": 4}, 4),  # no method
        ({"jsonrpc": "2.0", "method": 12, "id": 5}, 5),
        ({"jsonrpc": "2.0", "method": "test_echo", "id": {"bad": 1}}, None),
        ([], None),  # empty batch
    ],
)
async def test_invalid_request(rpc, payload, id):
    status, body = await post(rpc, payload)
    assert status == 200
    err(body, INVALID_REQUEST, id)
    await assert_still_serving(rpc)


async def test_unknown_method(rpc):
    status, body = await post(rpc, req("nope_nothing", [], id=9))
    assert "nope_nothing" in err(body, METHOD_NOT_FOUND, 9)
    await assert_still_serving(rpc)


async def test_params_not_array_or_object(rpc):
    status, body = await post(rpc, req("test_echo", "scalar", id=10))
    err(body, INVALID_PARAMS, 10)
    status, body = await post(rpc, req("test_echo", 3, id=11))
    err(body, INVALID_PARAMS, 11)
    assert rpc.calls == []  # rejected before reaching the method
    await assert_still_serving(rpc)


async def test_rpc_error_from_method(rpc):
    status, body = await post(rpc, req("test_badParams", [1], id=12))
    assert err(body, INVALID_PARAMS, 12) == "amount must be an integer"
    await assert_still_serving(rpc)


async def test_internal_error_is_reported_and_logged(rpc, caplog):
    status, body = await post(rpc, req("test_boom", [], id=13))
    message = err(body, INTERNAL_ERROR, 13)
    assert "something broke inside" not in message
    assert any(r.levelname == "ERROR" and "test_boom" in r.getMessage() and r.exc_info for r in caplog.records)
    await assert_still_serving(rpc)


async def test_batch_mixed(rpc):
    batch = [
        req("test_echo", [1], id=1),
        {"jsonrpc": "2.0", "method": "test_echo", "params": ["note"]},  # notification
        req("test_badParams", [], id=2),
        req("nope_nothing", id=3),
        req("test_boom", id=4),
        {"jsonrpc": "2.0", "id": 5},
    ]
    status, body = await post(rpc, batch)
    assert status == 200
    assert isinstance(body, list) and len(body) == 5
    by_id = {item["id"]: item for item in body}
    assert by_id[1] == {"jsonrpc": "2.0", "result": {"echo": [1]}, "id": 1}
    err(by_id[2], INVALID_PARAMS, 2)
    err(by_id[3], METHOD_NOT_FOUND, 3)
    err(by_id[4], INTERNAL_ERROR, 4)
    err(by_id[5], INVALID_REQUEST, 5)
    assert rpc.calls.count("test_echo") == 2  # the notification ran, with no response


async def test_batch_with_invalid_items(rpc):
    status, body = await post(rpc, [1, req("test_echo", [], id="a")])
    assert len(body) == 2
    err(body[0], INVALID_REQUEST, None)
    assert body[1] == {"jsonrpc": "2.0", "result": {"echo": []}, "id": "a"}


async def test_notifications_only(rpc):
    status, body = await post(rpc, [{"jsonrpc": "2.0", "method": "test_echo"}, {"jsonrpc": "2.0", "method": "test_boom"}])
    assert (status, body) == (204, None)
    status, body = await post(rpc, {"jsonrpc": "2.0", "method": "test_echo", "params": []})
    assert (status, body) == (204, None)
    assert rpc.calls == ["test_echo", "test_boom", "test_echo"]
    await assert_still_serving(rpc)


async def test_batch_over_limit(rpc):
    status, body = await post(rpc, [req("test_echo", [i], id=i) for i in range(BATCH_MAX + 1)])
    assert isinstance(body, dict)  # one error, not per item
    assert str(BATCH_MAX) in err(body, INVALID_REQUEST, None)
    assert rpc.calls == []
    status, body = await post(rpc, [req("test_echo", [i], id=i) for i in range(BATCH_MAX)])
    assert [item["id"] for item in body] == list(range(BATCH_MAX))
    await assert_still_serving(rpc)


async def test_body_over_limit(rpc):
    big = req("test_echo", ["x" * (BODY_MAX + 10)], id=1)
    status, body = await post(rpc, big)
    assert status == 413
    assert str(BODY_MAX) in err(body, INVALID_REQUEST, None)
    assert rpc.calls == []
    await assert_still_serving(rpc)


async def test_body_over_limit_chunked(rpc):
    async def chunks():
        for _ in range(4):
            yield b" " * (BODY_MAX // 2)
        yield json.dumps(req("test_echo", [], id=1)).encode()

    async with rpc.post("/", data=chunks()) as resp:
        assert resp.status == 413
        body = json.loads(await resp.text())
    assert str(BODY_MAX) in err(body, INVALID_REQUEST, None)
    assert rpc.calls == []
    await assert_still_serving(rpc)


async def test_privileged_needs_token(rpc):
    for headers in (None, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}, {"Authorization": f"Basic {TOKEN}"}):
        status, body = await post(rpc, req(PRIV, [], id=20), headers=headers)
        message = err(body, UNAUTHORIZED, 20)
        assert message.startswith("unauthorized:") and "cookie" in message
    assert rpc.calls == []
    status, body = await post(rpc, req(PRIV, [], id=21), headers={"Authorization": f"Bearer {TOKEN}"})
    assert body == {"jsonrpc": "2.0", "result": "mining", "id": 21}
    # unprivileged methods need no token
    await assert_still_serving(rpc)


async def test_privileged_in_batch(rpc):
    status, body = await post(rpc, [req(PRIV, id=1), req("test_echo", id=2)])
    err(body[0], UNAUTHORIZED, 1)
    assert body[1]["result"] == {"echo": None}
    status, body = await post(rpc, [req(PRIV, id=1)], headers={"Authorization": f"Bearer {TOKEN}"})
    assert body == [{"jsonrpc": "2.0", "result": "mining", "id": 1}]


async def test_no_token_configured_refuses_privileged():
    async def call(method: str, params: Any) -> Any:
        return "ran"

    server = RpcServer(call, None, lambda: {})
    port = await server.start()
    try:
        async with aiohttp.ClientSession(base_url=f"http://127.0.0.1:{port}") as session:
            status, body = await post(session, req(PRIV, id=1), headers={"Authorization": "Bearer "})
            err(body, UNAUTHORIZED, 1)
            status, body = await post(session, req("chain_getHead", id=2))
            assert body == {"jsonrpc": "2.0", "result": "ran", "id": 2}
    finally:
        await server.stop()


async def test_health(rpc):
    async with rpc.get("/health") as resp:
        assert resp.status == 200
        assert resp.content_type == "application/json"
        assert await resp.json() == {"ok": True, "height": 7}
