"""A small JSON-RPC 2.0 client for a chainlab node, on aiohttp.

Used by `chainlab rpc`, `chainlab tx` and `chainlab testnet` to talk to running nodes.
Two failure channels a caller can act on: `RpcCallError` when the node answered with a
JSON-RPC error (the node is fine, the request is not), and `NodeUnreachable` when no
usable answer came back at all (the node is down, the port is wrong, or it timed out).
`BadResponse` (a kind of NodeUnreachable) means something answered that is not a
chainlab node's JSON-RPC.
"""

import asyncio
import itertools
import json
from pathlib import Path
from typing import Any

import aiohttp

from node.settings import COOKIE_FILE, SettingsError

TIMEOUT_S_DEFAULT = 10.0
RESPONSE_BYTES_MAX = 16 * 1024 * 1024  # a full block with its transactions fits many times over
COOKIE_CHARS_MAX = 256  # the node writes 64 hex characters; anything much longer is not a cookie
_READ_CHUNK_BYTES = 64 * 1024


class RpcCallError(Exception):
    """The node answered the call with a JSON-RPC error object."""

    def __init__(self, code: int, message: str):
        super().__init__(f"error {code}: {message}")
        self.code = code
        self.message = message


class NodeUnreachable(Exception):
    """No usable answer: connection refused, timed out, or not a JSON-RPC reply."""

    def __init__(self, url: str, reason: str):
        super().__init__(f"node at {url} is not running or not reachable: {reason}")
        self.url = url
        self.reason = reason


class BadResponse(NodeUnreachable):
    """Something answered at the URL, but not with chainlab's JSON-RPC."""


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


class RpcClient:
    """JSON-RPC calls to one node over one aiohttp session.

    Use as `async with RpcClient(url, token) as client: await client.call(...)`; the
    session opens at first use and closes with the context (or `close()`).
    """

    def __init__(self, url: str, token: str | None = None, timeout_s: float = TIMEOUT_S_DEFAULT):
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"RPC URL must start with http:// or https://, got {url!r}")
        if not 0 < timeout_s <= 3600:
            raise ValueError("timeout_s must be in (0, 3600]")
        self.url = url.rstrip("/")
        self.token = token
        self.timeout_s = timeout_s
        self._session: aiohttp.ClientSession | None = None
        self._ids = itertools.count(1)

    async def __aenter__(self) -> "RpcClient":
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the session; safe to call more than once."""
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
            self._session = aiohttp.ClientSession(
                headers=headers, timeout=aiohttp.ClientTimeout(total=self.timeout_s)
            )
        return self._session

    async def _request(self, method: str, path: str, body: dict | None) -> tuple[int, Any]:
        """One HTTP exchange; returns (status, decoded JSON) or raises NodeUnreachable."""
        url = self.url + path
        try:
            async with self._get_session().request(method, url, json=body) as response:
                raw = await _read_bounded(response, url)
                status = response.status
        except asyncio.TimeoutError:
            raise NodeUnreachable(self.url, f"no answer within {self.timeout_s:g} s") from None
        except aiohttp.ClientConnectorError as exc:
            raise NodeUnreachable(self.url, f"cannot connect ({exc.os_error.strerror or exc.os_error})") from None
        except aiohttp.ClientError as exc:
            raise NodeUnreachable(self.url, f"{type(exc).__name__}: {exc}") from None
        try:
            return status, json.loads(raw, parse_constant=_reject_constant)
        except (ValueError, RecursionError):
            raise BadResponse(self.url, f"HTTP {status} with a body that is not JSON") from None

    async def call(self, method: str, *params: Any) -> Any:
        """Call `method` with positional params; return its result or raise RpcCallError."""
        request_id = next(self._ids)
        body = {"jsonrpc": "2.0", "method": method, "params": list(params), "id": request_id}
        status, reply = await self._request("POST", "/", body)
        if not isinstance(reply, dict) or reply.get("jsonrpc") != "2.0":
            raise BadResponse(self.url, f"HTTP {status} with JSON that is not a JSON-RPC 2.0 response")
        error = reply.get("error")
        if error is not None:
            if not isinstance(error, dict) or not isinstance(error.get("code"), int):
                raise BadResponse(self.url, "a JSON-RPC error without an integer code")
            message = error.get("message")
            raise RpcCallError(error["code"], message if isinstance(message, str) else repr(message))
        if "result" not in reply:
            raise BadResponse(self.url, "a JSON-RPC response with neither result nor error")
        if reply.get("id") != request_id:
            raise BadResponse(self.url, f"response id {reply.get('id')!r} does not match request id {request_id}")
        return reply["result"]

    async def health(self) -> dict:
        """GET /health: the node's name, height, peers and head when it is up."""
        status, reply = await self._request("GET", "/health", None)
        if status != 200 or not isinstance(reply, dict):
            raise BadResponse(self.url, f"GET /health answered HTTP {status}")
        return reply


async def _read_bounded(response: aiohttp.ClientResponse, url: str) -> bytes:
    """The body, refusing more than RESPONSE_BYTES_MAX so a wrong URL cannot fill memory."""
    if response.content_length is not None and response.content_length > RESPONSE_BYTES_MAX:
        raise BadResponse(url, f"response of {response.content_length} bytes exceeds {RESPONSE_BYTES_MAX}")
    parts: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(_READ_CHUNK_BYTES):
        size += len(chunk)
        if size > RESPONSE_BYTES_MAX:
            raise BadResponse(url, f"response exceeds {RESPONSE_BYTES_MAX} bytes")
        parts.append(chunk)
    return b"".join(parts)


def read_cookie_file(path: Path) -> str:
    """The bearer token in a cookie file; SettingsError when it is missing or malformed."""
    try:
        return _read_cookie(Path(path))
    except OSError as exc:
        raise SettingsError(f"cannot read the RPC cookie file {path}: {exc.strerror}") from None


def _read_cookie(path: Path) -> str:
    with open(path, "rb") as f:
        raw = f.read(COOKIE_CHARS_MAX + 2)
    try:
        token = raw.decode("ascii").strip()
    except UnicodeDecodeError:
        token = ""
    if not token or len(token) > COOKIE_CHARS_MAX or not all(c in "0123456789abcdefABCDEF" for c in token):
        raise SettingsError(f"{path} does not hold an RPC cookie (a hex token of at most {COOKIE_CHARS_MAX} characters)")
    return token


def read_cookie(home: Path) -> str | None:
    """The token of the node in `home`, or None when it is not running (no cookie file)."""
    path = Path(home) / COOKIE_FILE
    try:
        return _read_cookie(path)
    except FileNotFoundError:  # the node removes its cookie at a clean exit
        return None
    except OSError as exc:
        raise SettingsError(f"cannot read the RPC cookie file {path}: {exc.strerror}") from None
