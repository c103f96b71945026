"""JSON-RPC 2.0 over HTTP (DESIGN.md section 3): the I/O shell around the method table.

This module only moves JSON. It parses a request body, checks the JSON-RPC envelope,
answers batches item by item, checks the bearer token for privileged methods and hands
each call to `call(method, params)`, an async function supplied by the node that runs
one method and returns a JSON-ready result or raises `node.core.RpcError`.

Error codes:
  -32700 parse error (id null)          -32600 invalid request (also body/batch limits)
  -32601 method not found (from `call`) -32602 invalid params (params not array/object,
                                              or raised by `call`)
  -32603 internal error: `call` raised something other than RpcError; logged here
  -32001 unauthorized: a privileged method (`node.rpc_methods.PRIVILEGED`) was called
         without `Authorization: Bearer <token>` matching the node's RPC cookie.
         When the server has no token (`token=None`) privileged methods are refused.

Routes: POST `/` (single or batch), GET `/health` (200 with `health()` as JSON).
"""

import asyncio
import hmac
import json
import logging
from typing import Any, Awaitable, Callable

from aiohttp import web

from node.core import INVALID_PARAMS, RpcError
from node.rpc_methods import PRIVILEGED

log = logging.getLogger(__name__)

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
INTERNAL_ERROR = -32603
UNAUTHORIZED = -32001

RPC_BODY_BYTES_MAX = 1024 * 1024  # 1 MiB: ample for a batch of signed transactions
RPC_BATCH_ITEMS_MAX = 100  # bounds the work one HTTP request can queue on the node

_JSON = "application/json"
_NO_RESPONSE = None  # a notification: nothing goes back


def _error(request_id: Any, code: int, message: str) -> dict:
    return {"jsonrpc": "2.0", "error": {"code": code, "message": message}, "id": request_id}


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


class RpcServer:
    def __init__(
        self,
        call: Callable[[str, Any], Awaitable[Any]],
        token: str | None,
        health: Callable[[], dict],
        rpc_body_bytes_max: int = RPC_BODY_BYTES_MAX,
        rpc_batch_items_max: int = RPC_BATCH_ITEMS_MAX,
    ):
        if rpc_body_bytes_max < 1 or rpc_batch_items_max < 1:
            raise ValueError("rpc_body_bytes_max and rpc_batch_items_max must be positive")
        self._call = call
        self._token = token
        self._health = health
        self.rpc_body_bytes_max = rpc_body_bytes_max
        self.rpc_batch_items_max = rpc_batch_items_max
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    # --- lifecycle ------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Listen on host:port (port 0 picks a free one) and return the bound port."""
        if self._runner is not None:
            raise RuntimeError("RpcServer already started")
        app = web.Application(client_max_size=self.rpc_body_bytes_max)
        app.router.add_post("/", self._handle_rpc)
        app.router.add_get("/health", self._handle_health)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            site = web.TCPSite(runner, host, port)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        log.info("rpc listening on %s:%d", host, self.port)
        return self.port

    async def stop(self) -> None:
        """Stop listening; safe to call more than once."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    # --- routes ---------------------------------------------------------------------

    async def _handle_health(self, request: web.Request) -> web.Response:
        try:
            health = self._health()
            body = json.dumps(health)
        except Exception:
            log.exception("health() failed")
            return web.Response(status=500, text=json.dumps({"ok": False, "error": "health check failed"}), content_type=_JSON)
        # 503 while the node is starting or stopping, so healthchecks wait for it.
        status = 200 if health.get("status", "ok") == "ok" else 503
        return web.Response(status=status, text=body, content_type=_JSON)

    async def _handle_rpc(self, request: web.Request) -> web.Response:
        too_big = f"request body exceeds rpc_body_bytes_max ({self.rpc_body_bytes_max} bytes)"
        if request.content_length is not None and request.content_length > self.rpc_body_bytes_max:
            return self._respond(json.dumps(_error(None, INVALID_REQUEST, too_big)), status=413)
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return self._respond(json.dumps(_error(None, INVALID_REQUEST, too_big)), status=413)
        try:
            message = json.loads(raw, parse_constant=_reject_constant)
        except (ValueError, RecursionError):
            return self._respond(json.dumps(_error(None, PARSE_ERROR, "Parse error: body is not valid JSON")))

        authorized = self._authorized(request.headers.get("Authorization"))
        if isinstance(message, list):
            if not message:
                return self._respond(json.dumps(_error(None, INVALID_REQUEST, "Invalid Request: empty batch")))
            if len(message) > self.rpc_batch_items_max:
                text = f"Invalid Request: batch of {len(message)} items exceeds rpc_batch_items_max ({self.rpc_batch_items_max})"
                return self._respond(json.dumps(_error(None, INVALID_REQUEST, text)))
            # Concurrently, so a batch costs one pass of the node's driver, not one per item;
            # the calls still reach the node in batch order (each task starts in order).
            answers = await asyncio.gather(*(self._one(item, authorized) for item in message))
            parts = [p for p in answers if p is not _NO_RESPONSE]
            if not parts:
                return web.Response(status=204)
            return self._respond("[" + ",".join(parts) + "]")
        part = await self._one(message, authorized)
        if part is _NO_RESPONSE:
            return web.Response(status=204)
        return self._respond(part)

    @staticmethod
    def _respond(text: str, status: int = 200) -> web.Response:
        return web.Response(status=status, text=text, content_type=_JSON)

    def _authorized(self, header: str | None) -> bool:
        if self._token is None or header is None:
            return False
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(value.strip().encode(), self._token.encode())

    # --- one request object -----------------------------------------------------------

    async def _one(self, item: Any, authorized: bool) -> str | None:
        """Answer one request object as encoded JSON, or None for a notification."""
        if not isinstance(item, dict):
            return json.dumps(_error(None, INVALID_REQUEST, "Invalid Request: expected a JSON object"))
        request_id = item.get("id")
        id_ok = request_id is None or (isinstance(request_id, (str, int, float)) and not isinstance(request_id, bool))
        if not id_ok:
            return json.dumps(_error(None, INVALID_REQUEST, "Invalid Request: id must be a string, a number or null"))
        if item.get("jsonrpc") != "2.0":
            return json.dumps(_error(request_id, INVALID_REQUEST, 'Invalid Request: "jsonrpc" must be "2.0"'))
        method = item.get("method")
        if not isinstance(method, str) or not method:
            return json.dumps(_error(request_id, INVALID_REQUEST, 'Invalid Request: "method" must be a non-empty string'))
        notification = "id" not in item

        params = item.get("params")
        if "params" in item and not isinstance(params, (list, dict)):
            response = _error(request_id, INVALID_PARAMS, "params must be an array or an object")
        elif method in PRIVILEGED and not authorized:
            response = _error(
                request_id,
                UNAUTHORIZED,
                f"unauthorized: {method} needs 'Authorization: Bearer <token>' with the token from the node's RPC cookie file",
            )
        else:
            response = await self._invoke(request_id, method, params)
        if notification:
            return _NO_RESPONSE
        try:
            return json.dumps(response)
        except (TypeError, ValueError) as exc:
            log.error("rpc %s returned a result that is not JSON: %s", method, exc)
            return json.dumps(_error(request_id, INTERNAL_ERROR, "Internal error: result is not JSON-serialisable"))

    async def _invoke(self, request_id: Any, method: str, params: Any) -> dict:
        try:
            result = await self._call(method, params)
        except RpcError as exc:
            return _error(request_id, exc.code, exc.message)
        except Exception as exc:
            log.exception("rpc %s raised an unexpected error", method)
            return _error(request_id, INTERNAL_ERROR, f"Internal error ({type(exc).__name__}); see the node log")
        return {"jsonrpc": "2.0", "result": result, "id": request_id}
