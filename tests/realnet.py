"""Helpers for tests that run real chainlab node processes on 127.0.0.1.

Everything here talks to nodes the way a user does: the `chainlab` command line
(`genesis`, `node`, `testnet`, `rpc`, `tx`), JSON-RPC over plain HTTP, and the JSON log
lines the nodes write. Nothing imports the node's own client, so a bug there cannot
hide a bug in the node.

Waiting is always `wait_for(fn, timeout_s, what)`: poll a condition with a deadline and,
when it expires, fail with what was awaited and the last value (or error) observed.
"""

import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

CLI_TIMEOUT_S = 60.0  # one `chainlab` command; `testnet up` waits for every node's /health
HTTP_TIMEOUT_S = 10.0
POLL_INTERVAL_S = 0.2
NODE_STOP_TIMEOUT_S = 15.0  # SIGTERM to exit; then SIGKILL
LOG_CHARS_SHOWN = 4_000  # of a failing command's output, in the failure message


def chainlab_command() -> list[str]:
    """The `chainlab` entry point of this venv, or `python -m node.cli` without it."""
    beside = Path(sys.executable).with_name("chainlab")
    if beside.exists():
        return [str(beside)]
    found = shutil.which("chainlab")
    if found:
        return [found]
    return [sys.executable, "-m", "node.cli"]


CHAINLAB = chainlab_command()
REPO = Path(__file__).resolve().parent.parent  # `python -m node.cli` needs the repo on sys.path


class CommandFailed(AssertionError):
    pass


def chainlab(*args: str, timeout_s: float = CLI_TIMEOUT_S, check: bool = True) -> subprocess.CompletedProcess:
    """Run `chainlab ARGS...` to completion; fail with its output when it exits non-zero."""
    argv = [*CHAINLAB, *args]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, cwd=REPO,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        raise CommandFailed(f"{' '.join(argv)} did not finish within {timeout_s:g} s; "
                            f"stdout: {_tail(exc.stdout)} stderr: {_tail(exc.stderr)}") from None
    if check and done.returncode != 0:
        raise CommandFailed(f"{' '.join(argv)} exited {done.returncode}; "
                            f"stdout: {_tail(done.stdout)} stderr: {_tail(done.stderr)}")
    return done


def _tail(text: Any) -> str:
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    text = text or ""
    return text if len(text) <= LOG_CHARS_SHOWN else "..." + text[-LOG_CHARS_SHOWN:]


# --- waiting ---------------------------------------------------------------------------


class WaitTimeout(AssertionError):
    pass


# Errors that mean "not yet" while polling a node: it is restarting, or its answer says no.
TRANSIENT_ERRORS = (OSError, http.client.HTTPException, ValueError)


def wait_for(fn: Callable[[], Any], timeout_s: float, what: str, until: Callable[[Any], bool] = bool,
             interval_s: float = POLL_INTERVAL_S) -> Any:
    """Call `fn` until `until(value)` holds and return that value.

    A transient error (connection refused, an RPC error) counts as "not yet"; at the
    deadline the failure names `what` and the last value or error observed.
    """
    deadline = time.monotonic() + timeout_s
    last: Any = "<never called>"
    while True:
        try:
            value = fn()
        except TRANSIENT_ERRORS as exc:
            last = f"{type(exc).__name__}: {exc}"
        else:
            if until(value):
                return value
            last = value
        if time.monotonic() >= deadline:
            raise WaitTimeout(f"timed out after {timeout_s:g} s waiting for {what}; last observed: {last!r}")
        time.sleep(interval_s)


def holds_for(fn: Callable[[], Any], duration_s: float, what: str, check: Callable[[Any], bool],
              interval_s: float = 0.5) -> list[Any]:
    """Sample `fn` for `duration_s` and fail at the first sample where `check` is false.

    For properties that must stay true ("stays refused"), not for waiting: the
    window is the property. Returns the samples.
    """
    deadline = time.monotonic() + duration_s
    samples = []
    while True:
        value = fn()
        samples.append(value)
        assert check(value), f"{what} stopped holding after {len(samples)} samples: {value!r}"
        if time.monotonic() >= deadline:
            return samples
        time.sleep(interval_s)


# --- JSON-RPC over plain HTTP ---------------------------------------------------------


class RpcError(ValueError):
    """The node answered with a JSON-RPC error object (a ValueError: "not yet" for wait_for)."""

    def __init__(self, code: int, message: str):
        super().__init__(f"JSON-RPC error {code}: {message}")
        self.code = code
        self.message = message


def http_request(url: str, method: str, path: str, body: Any = None,
                 headers: dict[str, str] | None = None, timeout_s: float = HTTP_TIMEOUT_S) -> tuple[int, bytes]:
    """One HTTP exchange on a fresh connection; (status, body).

    `body` as bytes goes with a Content-Length; as a list of byte strings it goes
    chunked, with no length announced, so the server learns the size only by reading.
    """
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout_s)
    try:
        chunked = isinstance(body, list)
        conn.request(method, path, body=iter(body) if chunked else body, headers=headers or {},
                     encode_chunked=chunked)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def post_json(url: str, payload: Any, token: str | None = None) -> tuple[int, Any]:
    """POST `payload`: bytes as they are, a list of bytes chunked, anything else as JSON;
    (status, decoded reply or None)."""
    raw_list = isinstance(payload, list) and payload and all(isinstance(p, bytes) for p in payload)
    body = payload if isinstance(payload, bytes) or raw_list else json.dumps(payload).encode()
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    status, raw = http_request(url, "POST", "/", body, headers)
    return status, (json.loads(raw) if raw else None)


def rpc(url: str, method: str, *params: Any, token: str | None = None) -> Any:
    """Call `method`; its result, or RpcError."""
    status, reply = post_json(url, {"jsonrpc": "2.0", "method": method, "params": list(params), "id": 1}, token)
    assert isinstance(reply, dict) and reply.get("jsonrpc") == "2.0", f"HTTP {status}: not JSON-RPC: {reply!r}"
    if "error" in reply:
        raise RpcError(reply["error"]["code"], reply["error"]["message"])
    return reply["result"]


def health(url: str) -> dict:
    status, raw = http_request(url, "GET", "/health")
    if status != 200:
        raise ValueError(f"GET /health answered HTTP {status}")
    return json.loads(raw)


def height(url: str) -> int:
    return rpc(url, "chain_getHead")["height"]


def peer_ids(url: str) -> set[str]:
    """Node ids of the peers that finished the handshake."""
    return {p["node_id"] for p in rpc(url, "net_peers") if p["node_id"] and p["state"] == "ready"}


def common_block(urls: list[str], min_height: int, spread_max: int) -> tuple[int, str] | None:
    """(height, hash) when every node has the same block at the lowest head height,
    that height is at least `min_height` and the heads are within `spread_max`; else None.

    Equal hashes at one height mean equal chains up to it: each block names its parent.
    """
    heights = [height(u) for u in urls]
    low = min(heights)
    if low < min_height or max(heights) - low > spread_max:
        return None
    hashes = {rpc(u, "chain_getBlockHash", low) for u in urls}
    return (low, hashes.pop()) if len(hashes) == 1 else None


# --- logs -------------------------------------------------------------------------------


def log_events(path: Path, offset: int = 0) -> list[dict]:
    """The JSON log lines of a node log from byte `offset` (lines that are not JSON skipped)."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return []
    events = []
    for line in data.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            events.append(record)
    return events


def find_event(path: Path, name: str, offset: int = 0) -> dict | None:
    return next((e for e in log_events(path, offset) if e.get("event") == name), None)


def file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


# --- processes --------------------------------------------------------------------------


def free_port() -> int:
    """A port the OS reports free now (for `chainlab genesis`, which needs fixed ports)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped by its parent) is not running.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def pid_runs_home(pid: int, home: Path) -> bool:
    """True when `pid` is a live chainlab node of `home` (so a recycled pid is never killed)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return pid_alive(pid) and b"node" in argv and any(str(home).encode() in a for a in argv)


class NodeProcess:
    """One `chainlab node --home HOME ...` started by the test, logging to HOME/test-node.log."""

    def __init__(self, home: Path, *flags: str):
        self.home = Path(home)
        self.log_path = self.home / "test-node.log"
        self._log_file = open(self.log_path, "ab")
        self.proc = subprocess.Popen([*CHAINLAB, "node", "--home", str(self.home), *flags], cwd=REPO,
                                     stdout=self._log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.rpc_url = ""
        self.p2p_address = ""

    def wait_started(self, timeout_s: float = 30.0) -> dict:
        """Wait for the node_started log line; learn the RPC URL and P2P address from it."""
        def started() -> dict | None:
            if self.proc.poll() is not None:
                raise AssertionError(f"node {self.home} exited {self.proc.returncode}: "
                                     f"{_tail(self.log_path.read_text(errors='replace'))}")
            return find_event(self.log_path, "node_started")
        event = wait_for(started, timeout_s, f"node_started in {self.log_path}")
        self.rpc_url = event["rpc"]
        self.p2p_address = event["p2p"]
        wait_for(lambda: health(self.rpc_url), timeout_s, f"/health of {self.rpc_url}")
        return event

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL when it does not exit in time; idempotent."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(NODE_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(NODE_STOP_TIMEOUT_S)
        self._log_file.close()
        return self.proc.returncode


# --- a testnet made by `chainlab testnet up` ---------------------------------------------


@dataclass
class NodeInfo:
    name: str
    home: Path
    rpc_url: str
    p2p_address: str
    pid: int

    @property
    def log_path(self) -> Path:
        return self.home / "node.log"

    def token(self) -> str:
        return (self.home / "rpc.cookie").read_text().strip()


class Testnet:
    """`chainlab testnet up --detach` in `home`, and the commands that manage it."""

    __test__ = False  # not a test class for pytest, despite the name

    def __init__(self, home: Path):
        self.home = Path(home)
        self.seen_pids: set[int] = set()  # every node pid ever started here, for cleanup

    @classmethod
    def up(cls, home: Path, nodes: int, hashrate: int, timeout_s: float = 90.0) -> "Testnet":
        net = cls(home)
        try:
            chainlab("testnet", "up", "--home", str(home), "--nodes", str(nodes), "--p2p-port", "0",
                     "--rpc-port", "0", "--hashrate", str(hashrate), "--detach", timeout_s=timeout_s)
        except BaseException:
            net.cleanup()
            raise
        net.reload()
        return net

    def reload(self) -> dict[str, NodeInfo]:
        """Re-read nodes.json (a restarted node has a new pid, maybe new ports)."""
        data = json.loads((self.home / "nodes.json").read_text())
        nodes = {}
        for n in data["nodes"]:
            home = Path(n["home"])
            if not home.is_absolute():
                home = self.home / home
            info = NodeInfo(n["name"], home, n["rpc_url"], n["p2p_address"], int(n.get("pid") or 0))
            if info.pid:
                self.seen_pids.add(info.pid)
            nodes[info.name] = info
        self.nodes = nodes
        self.consensus = data.get("consensus")
        return nodes

    @property
    def names(self) -> list[str]:
        return list(self.nodes)

    @property
    def urls(self) -> list[str]:
        return [n.rpc_url for n in self.nodes.values()]

    def url(self, name: str) -> str:
        return self.nodes[name].rpc_url

    def cli(self, *args: str, timeout_s: float = CLI_TIMEOUT_S) -> subprocess.CompletedProcess:
        """`chainlab testnet ARGS... --home HOME`."""
        return chainlab("testnet", *args, "--home", str(self.home), timeout_s=timeout_s)

    def kill(self, name: str) -> None:
        self.cli("kill", name)

    def start(self, name: str) -> NodeInfo:
        self.cli("start", name)
        return self.reload()[name]

    def cleanup(self) -> None:
        """`testnet down`, then SIGKILL any node process of this testnet still alive."""
        errors = []
        if (self.home / "nodes.json").exists():
            try:
                self.reload()
            except (OSError, ValueError, KeyError) as exc:
                errors.append(f"nodes.json unreadable: {exc}")
            try:
                chainlab("testnet", "down", "--home", str(self.home), timeout_s=60)
            except CommandFailed as exc:
                errors.append(str(exc))
        for pid in self.seen_pids:
            if pid_runs_home(pid, self.home):
                os.kill(pid, signal.SIGKILL)
                errors.append(f"pid {pid} survived `testnet down` and was killed")
        if errors:
            # Cleanup must not hide a test's own failure, but a node left running is a bug.
            print("testnet cleanup:", *errors, sep="\n  ", file=sys.stderr)
        self.cleanup_errors = errors


TXID_RE = re.compile(r"[0-9a-f]{64}")


def txid_in(output: str) -> str:
    """The txid `chainlab tx transfer` prints on its first line (the lines after it may hold block hashes)."""
    first = output.strip().splitlines()[0].strip() if output.strip() else ""
    assert TXID_RE.fullmatch(first), f"the first line is not a transaction id (64 hex characters): {output!r}"
    return first
