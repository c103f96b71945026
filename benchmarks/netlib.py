"""Real node processes for the benchmarks: networks, processes, JSON-RPC, logs, memory.

The network benchmarks (`bench_node.py`, `bench_rpc.py`, `bench_propagation.py`,
`bench_startup.py`) drive chainlab the way a user does: `chainlab genesis` writes the
homes, one `chainlab node` process runs per node, JSON-RPC over HTTP reads them, and
the JSON log lines each node prints are parsed afterwards. Ports are chosen free on
127.0.0.1 before the nodes start and passed as flags (`--p2p-port`, `--rpc-port`,
`--advertise`, `--bootstrap`), so every node knows its peers' addresses up front.

Set CHAINLAB_BENCH_PROFILE=DIR to run every node under cProfile (DIR/node<i>.prof,
written when the node exits cleanly) and CHAINLAB_BENCH_KEEP=1 to keep the temporary
homes and logs.

Every process started here is stopped in `Cluster.close()` (SIGTERM, then SIGKILL by
pid after a grace period, its children included), which the `cluster()` context
manager calls on any exit, SIGTERM to the benchmark included.
"""

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator

import benchlib  # noqa: F401  (puts the repository on sys.path)

import aiohttp

ROOT = benchlib.ROOT
STOP_GRACE_S = 10.0
START_TIMEOUT_S = 30.0


def chainlab_command() -> list[str]:
    """The `chainlab` entry point of this interpreter's venv, else `python -m node.cli`."""
    beside = Path(sys.executable).with_name("chainlab")
    if beside.exists():
        return [str(beside)]
    return [sys.executable, "-m", "node.cli"]


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.pop("CHAINLAB_LOG_LEVEL", None)
    return env


def free_ports(count: int) -> list[int]:
    """`count` distinct free TCP ports on 127.0.0.1 (all held open while choosing)."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def genesis(out: Path, *, nodes: int, accounts: int, seed: str, preset: str = "testnet",
            hashrate: int = 20_000, mining: bool = True) -> dict:
    """`chainlab genesis` into `out`; returns genesis.json as a dict.

    The base ports it writes into config.toml are overridden by flags at start."""
    argv = [*chainlab_command(), "genesis", "--out", str(out), "--nodes", str(nodes), "--accounts", str(accounts),
            "--seed", seed, "--preset", preset, "--hashrate", str(hashrate), "--p2p-port", "20000",
            "--rpc-port", "21000"]
    if not mining:
        argv.append("--no-mining")
    done = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, env=child_env(), timeout=120,
                          stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise RuntimeError(f"chainlab genesis failed ({done.returncode}): {done.stderr or done.stdout}")
    return json.loads((out / "genesis.json").read_text())


# --- processes ---------------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    """Direct children of `pid`, from /proc (no psutil)."""
    out = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                out.extend(int(p) for p in f.read().split())
    except OSError:
        pass
    return out


def descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        for child in _children(todo.pop()):
            if child not in found:
                found.append(child)
                todo.append(child)
    return found


def rss_kib(pid: int) -> int:
    """VmRSS of one process in KiB (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process (children not included), in seconds."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    except OSError:
        return False


@dataclass(eq=False)
class Proc:
    """A process we started, with the children it made (seen while it ran)."""

    name: str
    popen: subprocess.Popen
    log_path: Path | None = None
    started_at: float = 0.0  # time.time() just before spawn
    started_mono: float = 0.0  # time.monotonic() just before spawn
    seen_children: set[int] = field(default_factory=set)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def note_children(self) -> list[int]:
        kids = descendants(self.pid)
        self.seen_children.update(kids)
        return kids

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """SIGTERM, wait, SIGKILL; then any child still alive (by pid) is killed too."""
        self.note_children()
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(grace_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    self.popen.kill()
                self.popen.wait(5)
        deadline = time.monotonic() + 3.0
        for child in sorted(self.seen_children):
            while _alive(child) and time.monotonic() < deadline:
                time.sleep(0.05)
            if _alive(child):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(child, signal.SIGKILL)


def spawn(name: str, argv: list[str], log_path: Path | None) -> Proc:
    out = open(log_path, "ab") if log_path is not None else subprocess.DEVNULL
    try:
        t_wall, t_mono = time.time(), time.monotonic()
        popen = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=ROOT,
                                 env=child_env(), start_new_session=True)
    finally:
        if log_path is not None:
            out.close()
    return Proc(name, popen, log_path, t_wall, t_mono)


BARE_SERVER = ROOT / "benchmarks" / "bare_rpc_server.py"


def spawn_bare_rpc(port: int, result_file: Path, log_path: Path | None) -> Proc:
    """`bare_rpc_server.py` on 127.0.0.1:port, answering the JSON in `result_file`."""
    return spawn("bare-rpc", [sys.executable, str(BARE_SERVER), "--port", str(port), "--result", str(result_file)],
                 log_path)


@dataclass(eq=False)
class Node:
    index: int
    home: Path
    p2p_port: int
    rpc_port: int
    proc: Proc | None = None

    @property
    def name(self) -> str:
        return f"node{self.index}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.rpc_port}"

    @property
    def log_path(self) -> Path:
        return self.home / "node.log"

    def token(self) -> str:
        return (self.home / "rpc.cookie").read_text().strip()

    def logs(self) -> list[dict]:
        return read_log(self.log_path)


def read_log(path: Path) -> list[dict]:
    out = []
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return out
    for line in text.splitlines():
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
    return out


def log_time(record: dict) -> float:
    """structlog's ISO UTC timestamp as seconds since the epoch (time.time())."""
    return datetime.fromisoformat(record["timestamp"].replace("Z", "+00:00")).timestamp()


class Cluster:
    """N node homes from `chainlab genesis` in a temporary folder, and the processes started on them."""

    def __init__(self, nodes: int, *, accounts: int = 8, seed: str = "bench", preset: str = "testnet",
                 hashrate: int = 20_000, mining: bool = True, root: Path | None = None):
        self.tmp = Path(tempfile.mkdtemp(prefix="chainlab-bench-", dir=root))
        self.out = self.tmp / "net"
        self.genesis = genesis(self.out, nodes=nodes, accounts=accounts, seed=seed, preset=preset,
                               hashrate=hashrate, mining=mining)
        self.chain_id = self.genesis["chain_id"]
        self.accounts = json.loads((self.out / "accounts.json").read_text())
        ports = free_ports(2 * nodes)
        self.nodes = [Node(i, self.out / f"node{i}", ports[2 * i], ports[2 * i + 1]) for i in range(nodes)]
        self.procs: list[Proc] = []
        self.mining = mining
        self.hashrate = hashrate
        self.preset = preset

    def bootstrap_of(self, node: Node, peers: int = 3) -> list[str]:
        """The ring `chainlab genesis` writes: each node dials its next `peers` neighbours."""
        n = len(self.nodes)
        return [f"127.0.0.1:{self.nodes[(node.index + k) % n].p2p_port}" for k in range(1, min(peers, n - 1) + 1)]

    def start_node(self, node: Node, *, mining: bool | None = None, hashrate: int | None = None,
                   extra: list[str] | None = None) -> Proc:
        command = chainlab_command()
        profile_dir = os.environ.get("CHAINLAB_BENCH_PROFILE")
        if profile_dir:  # for finding bottlenecks: each node under cProfile, written at its clean exit
            Path(profile_dir).mkdir(parents=True, exist_ok=True)
            command = [sys.executable, "-m", "cProfile", "-o", str(Path(profile_dir) / f"{node.name}.prof"),
                       "-m", "node.cli"]
        argv = [*command, "node", "--home", str(node.home), "--name", node.name,
                "--p2p-port", str(node.p2p_port), "--rpc-port", str(node.rpc_port),
                "--advertise", f"127.0.0.1:{node.p2p_port}",
                "--mining", "true" if (self.mining if mining is None else mining) else "false",
                "--hashrate", str(self.hashrate if hashrate is None else hashrate)]
        bootstrap = self.bootstrap_of(node)
        if bootstrap:
            argv += ["--bootstrap", ",".join(bootstrap)]
        argv += extra or []
        proc = spawn(node.name, argv, node.log_path)
        node.proc = proc
        self.procs.append(proc)
        return proc

    def stop_node(self, node: Node) -> None:
        if node.proc is not None:
            node.proc.stop()
            node.proc = None

    def close(self) -> None:
        # SIGTERM every node first, so they stop in parallel; then wait for each.
        for proc in self.procs:
            with contextlib.suppress(Exception):
                proc.note_children()
                if proc.popen.poll() is None:
                    proc.popen.send_signal(signal.SIGTERM)
        for proc in self.procs:
            with contextlib.suppress(Exception):
                proc.stop()
        self.procs.clear()
        if os.environ.get("CHAINLAB_BENCH_KEEP"):
            print(f"(kept {self.tmp})", file=sys.stderr)
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)


@contextlib.contextmanager
def terminate_on_sigterm() -> Iterator[None]:
    """SIGTERM to the benchmark raises SystemExit, so `finally` blocks stop our processes."""
    def handler(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def cluster(nodes: int, **kwargs: Any) -> Iterator[Cluster]:
    with terminate_on_sigterm():
        c = Cluster(nodes, **kwargs)
        try:
            yield c
        finally:
            c.close()


# --- JSON-RPC over aiohttp -----------------------------------------------------------------


class RpcFailed(Exception):
    pass


def session(limit: int = 100) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=limit, limit_per_host=limit),
                                 timeout=aiohttp.ClientTimeout(total=60))


async def rpc(s: aiohttp.ClientSession, url: str, method: str, *params: Any, token: str | None = None) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else None
    body = {"jsonrpc": "2.0", "method": method, "params": list(params), "id": 1}
    async with s.post(url + "/", json=body, headers=headers) as r:
        reply = await r.json(content_type=None)
    if "error" in reply:
        raise RpcFailed(f"{method}: {reply['error']}")
    return reply["result"]


async def rpc_batch(s: aiohttp.ClientSession, url: str, calls: list[tuple[str, list]]) -> list[dict]:
    """One JSON-RPC batch; the replies in call order (each {'result'} or {'error'})."""
    body = [{"jsonrpc": "2.0", "method": m, "params": p, "id": i} for i, (m, p) in enumerate(calls)]
    async with s.post(url + "/", data=json.dumps(body), headers={"Content-Type": "application/json"}) as r:
        reply = await r.json(content_type=None)
    if isinstance(reply, dict):
        raise RpcFailed(f"batch refused: {reply.get('error')}")
    by_id = {item.get("id"): item for item in reply}
    return [by_id.get(i, {"error": "missing"}) for i in range(len(calls))]


async def health(s: aiohttp.ClientSession, url: str) -> dict:
    async with s.get(url + "/health") as r:
        return await r.json(content_type=None)


async def wait_healthy(s: aiohttp.ClientSession, node: Node, timeout_s: float = START_TIMEOUT_S,
                       interval_s: float = 0.005) -> float:
    """Poll /health until it answers 200; returns time.monotonic() of the first answer."""
    deadline = time.monotonic() + timeout_s
    while True:
        if node.proc is not None and node.proc.popen.poll() is not None:
            raise RuntimeError(f"{node.name} exited with {node.proc.popen.returncode}; log tail:\n"
                               f"{tail(node.log_path)}")
        try:
            async with s.get(node.url + "/health", timeout=aiohttp.ClientTimeout(total=2)) as r:
                if r.status == 200:
                    return time.monotonic()
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{node.name} did not answer /health within {timeout_s:g} s; log tail:\n"
                               f"{tail(node.log_path)}")
        await asyncio.sleep(interval_s)


async def wait_peers(s: aiohttp.ClientSession, nodes: list[Node], peers_min: int, timeout_s: float = 30.0) -> None:
    """Until every node has at least `peers_min` handshaken peers."""
    deadline = time.monotonic() + timeout_s
    while True:
        counts = [(await health(s, n.url))["peers"] for n in nodes]
        if min(counts) >= peers_min:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"peers per node {counts} after {timeout_s:g} s; wanted >= {peers_min}")
        await asyncio.sleep(0.1)


def tail(path: Path | None, chars: int = 2_000) -> str:
    if path is None:
        return ""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return text[-chars:]


# --- Ed25519 limit ---------------------------------------------------------------------------


def ed25519_verify_rate(triples: list[tuple[bytes, bytes, bytes]], repeat: int = 5) -> float:
    """Best single-core verifications per second of (public key, signature, message) triples."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    # Keys parsed beforehand: the limit is the bare verification, the strictest figure
    # (nodes keep parsed keys of recent senders, so they pay about this much too).
    parsed = [(Ed25519PublicKey.from_public_bytes(k), s, m) for k, s, m in triples]

    def verify_all() -> None:
        for key, signature, message in parsed:
            key.verify(signature, message)

    verify_all()  # warm up
    best = benchlib.best_interleaved({"verify": verify_all}, repeat)["verify"]
    return len(triples) / best


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 100))))
    return ordered[rank - 1]


def machine_note() -> str:
    return f"{os.cpu_count()} cores, Python {sys.version.split()[0]}"
