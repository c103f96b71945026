"""A local testnet of real node processes on 127.0.0.1: `chainlab testnet ...`.

A testnet home (default ~/.chainlab/testnet, or $CHAINLAB_TESTNET_HOME, or --home)
is a network folder written by `node.homes.create_network` plus one file of ours:

    nodes.json   {"consensus": ..., "nodes": [{"name", "home", "rpc_url", "p2p_address", "pid"}]}

With `--consensus pos` every node is a genesis validator (its home holds validator.key)
and no node mines; blocks come every 2 s slot from the chosen proposer.

Each node runs as `python -m node.cli node --home node<i>` in its own session (so a
Ctrl-C in the terminal reaches only this tool, which then stops the nodes in order),
with stdout and stderr appended to node<i>/node.log. Pids are recorded so that
`status`, `stop`, `start`, `kill` and `down` work from any shell; a recorded pid only
counts as our node while /proc/<pid>/cmdline still names the node's home, so a pid
reused by another program is never signalled.
"""

import asyncio
import contextlib
import errno
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Iterator, TextIO

from node.client import NodeUnreachable, RpcClient
from node.homes import ACCOUNTS_FILE, NODES_MAX, create_network
from node.settings import (
    CONFIG_FILE,
    ENV_PREFIX,
    GENESIS_FILE,
    LOG_FILE,
    SETTING_TYPES,
    Settings,
    SettingsError,
    load_settings,
    read_genesis,
)

TESTNET_HOME_ENV = "CHAINLAB_TESTNET_HOME"
TESTNET_HOME_DEFAULT = "~/.chainlab/testnet"
NODES_FILE = "nodes.json"
LOCK_FILE = ".nodes.lock"
NODES_FILE_BYTES_MAX = 1024 * 1024  # 64 nodes take a few kilobytes; more is not ours

HEALTH_WAIT_S = 30.0  # a node opens its store, replays its chain and listens well within this
STOP_WAIT_S = 10.0  # a clean shutdown flushes the store; after this the node gets SIGKILL
KILL_WAIT_S = 5.0  # the kernel frees a SIGKILLed process at once; this only bounds the wait
POLL_S = 0.2
HEALTH_TIMEOUT_S = 1.0  # one /health probe; a node on loopback answers in milliseconds
MONITOR_TTY_EVERY_S = 1.0
MONITOR_PLAIN_EVERY_S = 5.0  # a log file or pipe gets a block every 5 s, not a flood
LOG_TAIL_LINES = 20
LOG_TAIL_BYTES_MAX = 64 * 1024
HEAD_PREFIX_CHARS = 16
FREE_PORT_ATTEMPTS_MAX = 64
PORT_MAX = 65_535
CMDLINE_READS_MAX = 25  # with CMDLINE_RETRY_S: wait at most 0.5 s for a fresh process's command line
CMDLINE_RETRY_S = 0.02


class TestnetError(Exception):
    """A problem a person can act on; the message says what to do."""

    __test__ = False  # not a pytest test class despite the name


@dataclass(frozen=True)
class NodeEntry:
    name: str
    home: str  # absolute path, exactly as passed to the node's --home
    rpc_url: str
    p2p_address: str
    pid: int | None = None


@dataclass(frozen=True)
class Testnet:
    home: Path
    consensus: str
    nodes: tuple[NodeEntry, ...]

    def node(self, name: str) -> NodeEntry:
        for entry in self.nodes:
            if entry.name == name:
                return entry
        names = ", ".join(e.name for e in self.nodes)
        raise TestnetError(f"no node named {name!r} in the testnet at {self.home}; its nodes are {names}")

    def with_pid(self, name: str, pid: int | None) -> "Testnet":
        return replace(self, nodes=tuple(replace(e, pid=pid) if e.name == name else e for e in self.nodes))


# --- the testnet home and nodes.json --------------------------------------------------


def testnet_home(flag: str | None = None, environ: dict[str, str] | None = None) -> Path:
    """--home, else $CHAINLAB_TESTNET_HOME, else ~/.chainlab/testnet, as an absolute path."""
    environ = os.environ if environ is None else environ
    text = flag or environ.get(TESTNET_HOME_ENV) or TESTNET_HOME_DEFAULT
    return Path(os.path.abspath(os.path.expanduser(text)))


def node_command(node_home: Path) -> list[str]:
    """The command that runs one node in the foreground (tests replace it with a stub)."""
    return [sys.executable, "-m", "node.cli", "node", "--home", str(node_home)]


def load_testnet(home: Path) -> Testnet:
    """Read nodes.json; TestnetError when there is no testnet or the file is damaged."""
    path = home / NODES_FILE
    try:
        with open(path, "rb") as f:
            raw = f.read(NODES_FILE_BYTES_MAX + 1)
    except FileNotFoundError:
        raise TestnetError(f"no testnet at {home}; start one with `chainlab testnet up`") from None
    except OSError as exc:
        raise TestnetError(f"cannot read {path}: {exc.strerror}") from None
    damaged = f"{path} is damaged ({{}}); remove the folder or run `chainlab testnet up --reset`"
    if len(raw) > NODES_FILE_BYTES_MAX:
        raise TestnetError(damaged.format(f"larger than {NODES_FILE_BYTES_MAX} bytes"))
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise TestnetError(damaged.format(f"not JSON: {exc}")) from None
    if not isinstance(data, dict) or not isinstance(data.get("consensus"), str) or not isinstance(data.get("nodes"), list):
        raise TestnetError(damaged.format('expected {"consensus": str, "nodes": [...]}'))
    if not 1 <= len(data["nodes"]) <= NODES_MAX:
        raise TestnetError(damaged.format(f"it lists {len(data['nodes'])} nodes, not 1..{NODES_MAX}"))
    entries = []
    for i, item in enumerate(data["nodes"]):
        ok = (
            isinstance(item, dict)
            and all(isinstance(item.get(k), str) for k in ("name", "home", "rpc_url", "p2p_address"))
            and (item.get("pid") is None or (isinstance(item.get("pid"), int) and not isinstance(item["pid"], bool)
                                             and item["pid"] > 0))
        )
        if not ok:
            raise TestnetError(damaged.format(f"node entry {i} needs name, home, rpc_url, p2p_address and pid"))
        entries.append(NodeEntry(item["name"], item["home"], item["rpc_url"], item["p2p_address"], item.get("pid")))
    return Testnet(home, data["consensus"], tuple(entries))


def save_testnet(testnet: Testnet) -> None:
    """Write nodes.json atomically, so a reader in another shell never sees half a file."""
    path = testnet.home / NODES_FILE
    tmp = path.with_name(path.name + ".tmp")
    data = {"consensus": testnet.consensus, "nodes": [asdict(e) for e in testnet.nodes]}
    with open(tmp, "w") as f:
        f.write(json.dumps(data, indent=2) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


@contextlib.contextmanager
def _locked(home: Path) -> Iterator[None]:
    """Serialise read-modify-write of nodes.json between shells (up, start, stop, ...)."""
    with open(home / LOCK_FILE, "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _set_pid(home: Path, name: str, pid: int | None) -> None:
    with _locked(home):
        save_testnet(load_testnet(home).with_pid(name, pid))


def _rpc_url(settings: Settings) -> str:
    host = "127.0.0.1" if settings.rpc_host in ("0.0.0.0", "") else settings.rpc_host
    if host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.rpc_port}"


def _node_homes(home: Path) -> list[Path]:
    """node<i> folders in index order (node10 after node9)."""
    found = []
    for child in home.iterdir():
        suffix = child.name[len("node"):]
        if child.name.startswith("node") and suffix.isdigit() and (child / CONFIG_FILE).is_file():
            found.append((int(suffix), child))
    return [path for _, path in sorted(found)]


def _entries_from_homes(home: Path) -> list[tuple[NodeEntry, Settings]]:
    """Each node's entry from its config.toml (ignoring CHAINLAB_* variables: the nodes do too)."""
    out = []
    for node_home in _node_homes(home)[:NODES_MAX]:
        try:
            settings = load_settings(node_home, environ={})
        except SettingsError as exc:
            raise TestnetError(str(exc)) from None
        out.append((NodeEntry(node_home.name, str(node_home), _rpc_url(settings), settings.advertised_address), settings))
    if not out:
        raise TestnetError(f"{home} holds a {GENESIS_FILE} but no node<i> folders; run `chainlab testnet up --reset`")
    return out


# --- processes ------------------------------------------------------------------------


def is_running(pid: int | None, node_home: str) -> bool:
    """Whether `pid` is alive and is the node of `node_home` (not a reused pid, not a zombie)."""
    if pid is None or pid <= 0:
        return False
    # A child of ours that exited stays a zombie until reaped; reap it so it counts as gone.
    try:
        reaped, _ = os.waitpid(pid, os.WNOHANG)
        if reaped == pid:
            return False
    except ChildProcessError:
        pass  # not our child: the kernel's answer below decides
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False  # another user's process cannot be our node
    if not Path("/proc/self").exists():
        return True  # no /proc (macOS): signal 0 is the best evidence there is
    proc = Path("/proc") / str(pid)
    for _ in range(CMDLINE_READS_MAX):
        try:
            cmdline = (proc / "cmdline").read_bytes()
            stat = (proc / "stat").read_text()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            return False
        # /proc/<pid>/stat is "pid (comm) state ..."; comm may hold spaces or parentheses.
        if stat.rpartition(")")[2].split()[:1] == ["Z"]:
            return False
        if cmdline:
            return node_home.encode() in cmdline.split(b"\0")
        # Empty but alive: a process in the middle of exec shows no command line for a
        # moment (a process we just spawned); ask again shortly.
        time.sleep(CMDLINE_RETRY_S)
    return False


def _signal_node(pid: int, sig: int) -> None:
    """SIGKILL takes the node's whole process group (its miner worker too); SIGTERM only the
    node, which stops its own workers on the way out."""
    try:
        if sig == signal.SIGKILL and os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        pass  # it exited between the check and the signal: what we wanted


def _wait_gone(entries: list[NodeEntry], timeout_s: float) -> list[NodeEntry]:
    """Wait until every entry's process is gone; return the ones still running at the deadline."""
    deadline = time.monotonic() + timeout_s
    alive = [e for e in entries if is_running(e.pid, e.home)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = [e for e in alive if is_running(e.pid, e.home)]
    return alive


def terminate(entries: list[NodeEntry], wait_s: float = STOP_WAIT_S, err: TextIO | None = None) -> None:
    """SIGTERM every running node at once, wait up to `wait_s`, then SIGKILL whatever is left."""
    err = err or sys.stderr
    running = [e for e in entries if is_running(e.pid, e.home)]
    for e in running:
        _signal_node(e.pid, signal.SIGTERM)  # type: ignore[arg-type]
    for e in _wait_gone(running, wait_s):
        print(f"{e.name} (pid {e.pid}) did not stop within {wait_s:g} s; sending SIGKILL", file=err)
        _signal_node(e.pid, signal.SIGKILL)  # type: ignore[arg-type]
        for left in _wait_gone([e], KILL_WAIT_S):
            print(f"{left.name} (pid {left.pid}) is still alive after SIGKILL", file=err)


def _child_environ() -> dict[str, str]:
    """Our environment without CHAINLAB_<setting> variables: every node of a testnet would
    otherwise take the same port from one variable. Unbuffered, so node.log is current."""
    settings_vars = {ENV_PREFIX + name.upper() for name in SETTING_TYPES}
    env = {k: v for k, v in os.environ.items() if k not in settings_vars}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _spawn(entry: NodeEntry) -> subprocess.Popen:
    node_home = Path(entry.home)
    with open(node_home / LOG_FILE, "ab") as log:
        return subprocess.Popen(
            node_command(node_home),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=node_home,
            env=_child_environ(),
            start_new_session=True,
        )


def log_tail(node_home: str, lines: int = LOG_TAIL_LINES) -> str:
    """The last lines of a node's log (read from the end, bounded)."""
    path = Path(node_home) / LOG_FILE
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - LOG_TAIL_BYTES_MAX))
            data = f.read(LOG_TAIL_BYTES_MAX)
    except OSError as exc:
        return f"(cannot read {path}: {exc.strerror})"
    text = data.decode("utf-8", errors="replace").splitlines()[-lines:]
    return "\n".join(text) if text else f"({path} is empty)"


def _print_tail(entry: NodeEntry, why: str, err: TextIO) -> None:
    print(f"{entry.name} {why}; last {LOG_TAIL_LINES} lines of {Path(entry.home) / LOG_FILE}:", file=err)
    for line in log_tail(entry.home).splitlines():
        print(f"  | {line}", file=err)


# --- ports ----------------------------------------------------------------------------


def _bind_error(host: str, port: int) -> OSError | None:
    """None when host:port can be listened on (with SO_REUSEADDR, as the node's servers do)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            return exc
    return None


def check_ports(entries: list[tuple[NodeEntry, Settings]], resumed: bool = False) -> None:
    """Every node's RPC and P2P port must be free before any node starts."""
    problems = []
    for entry, settings in entries:
        for what, host, port in (("rpc", settings.rpc_host, settings.rpc_port), ("p2p", settings.p2p_host, settings.p2p_port)):
            exc = _bind_error(host, port)
            if exc is None:
                continue
            if exc.errno == errno.EADDRINUSE:
                problems.append(f"port {port} ({entry.name} {what}) is in use on {host}; stop what uses it or "
                                f"choose other ports with --rpc-port/--p2p-port")
            else:
                problems.append(f"cannot listen on {host}:{port} ({entry.name} {what}): {exc.strerror}")
    if problems:
        if resumed:
            problems.append("this testnet's ports were fixed when it was created: use `chainlab testnet up --reset` "
                            "with --rpc-port/--p2p-port, or another --home")
        raise TestnetError("\n".join(problems))


def pick_port_bases(count: int, runs: int, host: str = "127.0.0.1") -> list[int]:
    """Bases of `runs` disjoint runs of `count` consecutive free ports on `host`.

    The kernel picks a free port (bind to 0); the next count-1 ports are then bound too.
    Every socket stays open until all runs are found, so runs cannot overlap.
    """
    held: list[socket.socket] = []
    bases: list[int] = []
    try:
        for _ in range(runs):
            for _attempt in range(FREE_PORT_ATTEMPTS_MAX):
                run = _bind_run(host, count)
                if run is not None:
                    held.extend(run)
                    bases.append(run[0].getsockname()[1])
                    break
            else:
                raise TestnetError(f"found no {count} consecutive free ports on {host} in {FREE_PORT_ATTEMPTS_MAX} "
                                   f"tries; choose ports with --rpc-port/--p2p-port")
    finally:
        for s in held:
            s.close()
    return bases


def _bind_run(host: str, count: int) -> list[socket.socket] | None:
    first = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    first.bind((host, 0))
    run = [first]
    base = first.getsockname()[1]
    if base + count - 1 > PORT_MAX:
        first.close()
        return None
    for port in range(base + 1, base + count):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.bind((host, port))
        except OSError:
            s.close()
            for held in run:
                held.close()
            return None
        run.append(s)
    return run


def _check_port_bases(nodes: int, p2p_base: int, rpc_base: int) -> None:
    for flag, base in (("--p2p-port", p2p_base), ("--rpc-port", rpc_base)):
        if not 1 <= base <= PORT_MAX - nodes + 1:
            raise TestnetError(f"{flag} {base} leaves no room for {nodes} nodes; choose 1..{PORT_MAX - nodes + 1} "
                               f"(or 0 to pick free ports)")
    if p2p_base < rpc_base + nodes and rpc_base < p2p_base + nodes:
        raise TestnetError(f"--p2p-port {p2p_base} and --rpc-port {rpc_base} overlap for {nodes} nodes "
                           f"(each node i uses base + i)")


# --- probing nodes --------------------------------------------------------------------


@dataclass(frozen=True)
class Probe:
    running: bool
    health: dict | None  # GET /health when the node answered
    reason: str = ""  # why there is no health


async def _probe(entry: NodeEntry, client: RpcClient, running: bool) -> Probe:
    if not running:
        return Probe(False, None, "stopped" if entry.pid is None else "exited")
    try:
        return Probe(True, await client.health())
    except NodeUnreachable as exc:
        return Probe(True, None, exc.reason)


async def probe_all(entries: tuple[NodeEntry, ...], clients: dict[str, RpcClient],
                    running: dict[str, bool] | None = None) -> dict[str, Probe]:
    """Process state and /health of every node, the probes concurrent."""
    if running is None:
        running = {e.name: is_running(e.pid, e.home) for e in entries}
    for e in entries:
        if e.name not in clients or clients[e.name].url != e.rpc_url.rstrip("/"):
            clients[e.name] = RpcClient(e.rpc_url, timeout_s=HEALTH_TIMEOUT_S)
    probes = await asyncio.gather(*(_probe(e, clients[e.name], running[e.name]) for e in entries))
    return {e.name: p for e, p in zip(entries, probes)}


def _head(health: dict) -> str:
    head = health.get("head")
    return head[:HEAD_PREFIX_CHARS] if isinstance(head, str) else "?"


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [headers] + rows) for i in range(len(headers))]
    lines = ["  ".join(str(cell).ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [headers] + rows]
    return "\n".join(lines)


# --- commands -------------------------------------------------------------------------


def up(
    home: Path,
    *,
    nodes: int = 4,
    consensus: str = "pow",
    seed: str = "chainlab",
    accounts: int = 8,
    p2p_port_base: int = 30303,
    rpc_port_base: int = 8545,
    hashrate: int = 20_000,
    detach: bool = False,
    reset: bool = False,
    preset: str = "testnet",
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Create (or resume) the testnet in `home` and start its nodes.

    With `detach`, return once every node answers /health; otherwise stay in the
    foreground showing each node's height and stop them all on Ctrl-C or SIGTERM.
    """
    out, err = out or sys.stdout, err or sys.stderr
    if (home / NODES_FILE).exists():
        running = [e for e in load_testnet(home).nodes if is_running(e.pid, e.home)]
        if running:
            which = ", ".join(f"{e.name} pid {e.pid}" for e in running)
            raise TestnetError(f"the testnet in {home} is already running ({which}); see `chainlab testnet status`, "
                               f"or stop it with `chainlab testnet down`")
    if reset and home.exists():
        _reset(home)
    resumed = (home / GENESIS_FILE).exists()
    if resumed:
        print(f"resuming the testnet in {home} (its settings were fixed at creation; --reset starts a new one)", file=err)
    else:
        _create(home, nodes=nodes, consensus=consensus, seed=seed, accounts=accounts, p2p_port_base=p2p_port_base,
                rpc_port_base=rpc_port_base, hashrate=hashrate, err=err, preset=preset)
    try:
        genesis = read_genesis(home / GENESIS_FILE)
    except SettingsError as exc:
        raise TestnetError(str(exc)) from None
    entries = _entries_from_homes(home)
    check_ports(entries, resumed=resumed)
    testnet = Testnet(home, genesis.consensus, tuple(e for e, _ in entries))
    with _locked(home):
        save_testnet(testnet)
    return asyncio.run(_run_up(testnet, detach, out, err))


def _reset(home: Path) -> None:
    """Wipe a testnet home, but never a folder that does not look like one."""
    if not home.is_dir():
        raise TestnetError(f"{home} is not a folder")
    ours = (home / GENESIS_FILE).exists() or (home / NODES_FILE).exists()
    if not ours and any(home.iterdir()):
        raise TestnetError(f"{home} is not a chainlab testnet (no {GENESIS_FILE} or {NODES_FILE}); "
                           f"refusing to delete it with --reset")
    shutil.rmtree(home)


def _create(home: Path, *, nodes: int, consensus: str, seed: str, accounts: int, p2p_port_base: int,
            rpc_port_base: int, hashrate: int, err: TextIO, preset: str = "testnet") -> None:
    if not 1 <= nodes <= NODES_MAX:
        raise TestnetError(f"--nodes must be 1..{NODES_MAX}")
    if p2p_port_base == 0 or rpc_port_base == 0:
        picked = iter(pick_port_bases(nodes, (p2p_port_base == 0) + (rpc_port_base == 0)))
        p2p_port_base = p2p_port_base or next(picked)
        rpc_port_base = rpc_port_base or next(picked)
    _check_port_bases(nodes, p2p_port_base, rpc_port_base)
    try:
        # Proof of stake: create_network makes every node a validator and turns mining off.
        create_network(home, consensus=consensus, nodes=nodes, accounts=accounts, seed=seed, preset=preset,
                       p2p_port_base=p2p_port_base, rpc_port_base=rpc_port_base, mining=True, hashrate=hashrate)
    except SettingsError as exc:
        raise TestnetError(str(exc)) from None
    print(f"created a {consensus} testnet of {nodes} nodes in {home} (seed {seed!r}, {accounts} prefunded accounts)",
          file=err)


def _install_stop_signals(stop: asyncio.Event) -> list[int]:
    loop = asyncio.get_running_loop()
    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
        installed.append(sig)
    return installed


async def _run_up(testnet: Testnet, detach: bool, out: TextIO, err: TextIO) -> int:
    stop = asyncio.Event()
    installed = _install_stop_signals(stop)
    try:
        procs: dict[str, subprocess.Popen] = {}
        try:
            for entry in testnet.nodes:
                procs[entry.name] = _spawn(entry)
        finally:
            # Record whatever started, so `down` from another shell can stop it even now.
            with _locked(testnet.home):
                testnet = load_testnet(testnet.home)
                for name, proc in procs.items():
                    testnet = testnet.with_pid(name, proc.pid)
                save_testnet(testnet)
        if detach:
            return await _finish_detached(testnet, procs, stop, out, err)
        await _monitor(testnet.home, procs, stop, out, err)
        _stop_all(testnet.home, err)
        return 0
    finally:
        loop = asyncio.get_running_loop()
        for sig in installed:
            loop.remove_signal_handler(sig)


async def _finish_detached(testnet: Testnet, procs: dict[str, subprocess.Popen], stop: asyncio.Event,
                           out: TextIO, err: TextIO) -> int:
    outcome, names = await wait_healthy(testnet.nodes, procs, HEALTH_WAIT_S, stop, err)
    if outcome != "ok":
        for entry in testnet.nodes:
            if entry.name in names and outcome != "interrupted":
                _print_tail(entry, "exited during start" if outcome == "exited" else
                            f"did not answer /health within {HEALTH_WAIT_S:g} s", err)
        print("stopping the testnet", file=err)
        _stop_all(testnet.home, err)
        return 130 if outcome == "interrupted" else 1
    rows = [[e.name, e.rpc_url, str(e.pid)] for e in testnet.nodes]
    print(f"testnet of {len(testnet.nodes)} {testnet.consensus} nodes is up in {testnet.home}", file=out)
    print(_table(["NAME", "RPC", "PID"], rows), file=out)
    print(f"logs: {testnet.home}/node<i>/{LOG_FILE}", file=out)
    print(f"prefunded accounts: {testnet.home / ACCOUNTS_FILE}", file=out)
    print("see `chainlab testnet status`; stop with `chainlab testnet down`", file=out)
    return 0


async def wait_healthy(entries: tuple[NodeEntry, ...], procs: dict[str, subprocess.Popen], timeout_s: float,
                       stop: asyncio.Event, err: TextIO) -> tuple[str, list[str]]:
    """Wait until every node answers GET /health.

    Returns ("ok", []), ("exited", names) when a process ended first, ("timeout", names
    not answering) or ("interrupted", []) when `stop` was set.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    started = loop.time()
    tty = err.isatty()
    clients = {e.name: RpcClient(e.rpc_url, timeout_s=HEALTH_TIMEOUT_S) for e in entries}
    ready: set[str] = set()
    shown = -1
    try:
        while True:
            exited = [e.name for e in entries if procs[e.name].poll() is not None]
            if exited:
                if tty:
                    print(file=err)
                return "exited", exited
            waiting = [e for e in entries if e.name not in ready]
            results = await asyncio.gather(*(_healthy(clients[e.name]) for e in waiting))
            ready.update(e.name for e, ok in zip(waiting, results) if ok)
            if tty:
                print(f"\rwaiting for the nodes to answer: {len(ready)}/{len(entries)} ready, "
                      f"{loop.time() - started:.0f} s ", end="", file=err, flush=True)
            elif len(ready) != shown:
                print(f"waiting for the nodes to answer: {len(ready)}/{len(entries)} ready", file=err)
                shown = len(ready)
            if len(ready) == len(entries):
                if tty:
                    print(file=err)
                return "ok", []
            if loop.time() >= deadline:
                if tty:
                    print(file=err)
                return "timeout", [e.name for e in entries if e.name not in ready]
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), POLL_S)
            if stop.is_set():
                if tty:
                    print(file=err)
                return "interrupted", []
    finally:
        for client in clients.values():
            await client.close()


async def _healthy(client: RpcClient) -> bool:
    try:
        await client.health()
    except NodeUnreachable:
        return False  # not listening yet: the caller keeps asking until its deadline
    return True


def _stop_all(home: Path, err: TextIO) -> None:
    """Stop every recorded node and clear the pids (the folder may have gone meanwhile)."""
    try:
        testnet = load_testnet(home)
    except TestnetError as exc:
        print(f"cannot stop the nodes: {exc}", file=err)
        return
    terminate(list(testnet.nodes), STOP_WAIT_S, err)
    with _locked(home):
        current = load_testnet(home)
        for e in current.nodes:
            if not is_running(e.pid, e.home):
                current = current.with_pid(e.name, None)
        save_testnet(current)


async def _monitor(home: Path, procs: dict[str, subprocess.Popen], stop: asyncio.Event, out: TextIO,
                   err: TextIO) -> None:
    """Show each node's height, peers and head until `stop` is set or the testnet is taken down."""
    tty = out.isatty()
    every = MONITOR_TTY_EVERY_S if tty else MONITOR_PLAIN_EVERY_S
    clients: dict[str, RpcClient] = {}
    reported: set[int] = set()
    drawn = 0
    print(f"testnet in {home}: Ctrl-C stops every node", file=err)
    print(f"prefunded accounts in {home / ACCOUNTS_FILE}, logs in {home}/node<i>/{LOG_FILE}; in another shell try "
          "`chainlab testnet status` or `chainlab rpc chain_getHead`"
          + ("" if home == testnet_home(None, {}) else f" (add --home {home})"), file=err)
    try:
        while not stop.is_set():
            try:
                testnet = load_testnet(home)
            except TestnetError as exc:
                print(f"the testnet went away ({exc}); exiting", file=err)
                return
            if all(e.pid is None for e in testnet.nodes):
                print("every node was stopped (`chainlab testnet down`?); exiting", file=err)
                return
            running = {}
            for e in testnet.nodes:
                proc = procs.get(e.name)
                if proc is not None and proc.pid == e.pid:
                    code = proc.poll()  # our child: poll() reaps it and keeps the exit code
                    running[e.name] = code is None
                    if code is not None and code > 0 and proc.pid not in reported:
                        reported.add(proc.pid)
                        _print_tail(e, f"exited with code {code}", err)
                        drawn = 0
                else:
                    running[e.name] = is_running(e.pid, e.home)
            probes = await probe_all(testnet.nodes, clients, running)
            lines = [_monitor_line(e, probes[e.name]) for e in testnet.nodes]
            if tty:
                if drawn:
                    print(f"\x1b[{drawn}F", end="", file=out)
                for line in lines:
                    print("\x1b[2K" + line, file=out)
                drawn = len(lines)
            else:
                stamp = time.strftime("%H:%M:%S")
                for line in lines:
                    print(f"{stamp} {line}", file=out)
            out.flush()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), every)
        print("stopping the testnet", file=err)
    finally:
        for client in clients.values():
            await client.close()


def _monitor_line(entry: NodeEntry, probe: Probe) -> str:
    if probe.health is not None:
        h = probe.health
        return (f"{entry.name:<7} pid {entry.pid:<8} height {h.get('height', '?'):<6} peers {h.get('peers', '?'):<3} "
                f"head {_head(h)}")
    if probe.running:
        return f"{entry.name:<7} pid {entry.pid:<8} down (no answer at {entry.rpc_url})"
    return f"{entry.name:<7} down ({probe.reason})"


def status(home: Path, out: TextIO | None = None) -> int:
    """Print a table of the nodes; 0 when every node process is running, else 3."""
    out = out or sys.stdout
    testnet = load_testnet(home)
    probes = asyncio.run(_probe_once(testnet))
    rows = []
    for e in testnet.nodes:
        p = probes[e.name]
        if p.health is not None:
            state, height, peers, head = "up", str(p.health.get("height", "?")), str(p.health.get("peers", "?")), _head(p.health)
        else:
            state, height, peers, head = ("no-rpc" if p.running else p.reason), "-", "-", "-"
        rows.append([e.name, str(e.pid) if e.pid else "-", state, height, peers, head, e.rpc_url])
    print(_table(["NAME", "PID", "STATE", "HEIGHT", "PEERS", "HEAD", "RPC"], rows), file=out)
    return 0 if all(p.running for p in probes.values()) else 3


async def _probe_once(testnet: Testnet) -> dict[str, Probe]:
    clients: dict[str, RpcClient] = {}
    try:
        return await probe_all(testnet.nodes, clients)
    finally:
        for client in clients.values():
            await client.close()


def _running_entry(home: Path, name: str) -> NodeEntry:
    entry = load_testnet(home).node(name)
    if not is_running(entry.pid, entry.home):
        raise TestnetError(f"{name} is not running; start it with `chainlab testnet start {name}`")
    return entry


def stop(home: Path, name: str, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Stop one node cleanly: SIGTERM, then SIGKILL after STOP_WAIT_S."""
    out, err = out or sys.stdout, err or sys.stderr
    entry = _running_entry(home, name)
    began = time.monotonic()
    terminate([entry], STOP_WAIT_S, err)
    _set_pid(home, name, None)
    print(f"{name} stopped (pid {entry.pid}, {time.monotonic() - began:.1f} s)", file=out)
    return 0


def kill(home: Path, name: str, out: TextIO | None = None) -> int:
    """SIGKILL one node (and its miner worker): a crash, with no chance to clean up."""
    out = out or sys.stdout
    entry = _running_entry(home, name)
    _signal_node(entry.pid, signal.SIGKILL)  # type: ignore[arg-type]
    left = _wait_gone([entry], KILL_WAIT_S)
    if left:
        raise TestnetError(f"{name} (pid {entry.pid}) is still alive {KILL_WAIT_S:g} s after SIGKILL")
    # The pid stays recorded: `status` then shows the node as exited, not cleanly stopped.
    print(f"{name} killed (pid {entry.pid}, SIGKILL: no shutdown, its store was not closed)", file=out)
    return 0


def start(home: Path, name: str, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Start one stopped node again and wait until it answers /health."""
    out, err = out or sys.stdout, err or sys.stderr
    testnet = load_testnet(home)
    entry = testnet.node(name)
    if is_running(entry.pid, entry.home):
        raise TestnetError(f"{name} is already running (pid {entry.pid})")
    try:
        settings = load_settings(Path(entry.home), environ={})
    except SettingsError as exc:
        raise TestnetError(str(exc)) from None
    check_ports([(entry, settings)], resumed=True)
    proc = _spawn(entry)
    _set_pid(home, name, proc.pid)
    entry = replace(entry, pid=proc.pid)
    return asyncio.run(_finish_start(home, entry, proc, out, err))


async def _finish_start(home: Path, entry: NodeEntry, proc: subprocess.Popen, out: TextIO, err: TextIO) -> int:
    stop_event = asyncio.Event()
    installed = _install_stop_signals(stop_event)
    try:
        outcome, _ = await wait_healthy((entry,), {entry.name: proc}, HEALTH_WAIT_S, stop_event, err)
    finally:
        loop = asyncio.get_running_loop()
        for sig in installed:
            loop.remove_signal_handler(sig)
    if outcome == "ok":
        print(f"{entry.name} started (pid {entry.pid}, rpc {entry.rpc_url})", file=out)
        return 0
    if outcome == "exited":
        _print_tail(entry, f"exited during start (code {proc.returncode})", err)
    elif outcome == "timeout":
        _print_tail(entry, f"did not answer /health within {HEALTH_WAIT_S:g} s; stopping it", err)
    terminate([entry], STOP_WAIT_S, err)
    _set_pid(home, entry.name, None)
    return 130 if outcome == "interrupted" else 1


def down(home: Path, remove: bool = False, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Stop every node; with `remove`, delete the testnet folder afterwards."""
    out, err = out or sys.stdout, err or sys.stderr
    testnet = load_testnet(home)
    running = [e for e in testnet.nodes if is_running(e.pid, e.home)]
    terminate(running, STOP_WAIT_S, err)
    still = [e for e in running if is_running(e.pid, e.home)]
    with _locked(home):
        current = load_testnet(home)
        for e in current.nodes:
            if not is_running(e.pid, e.home):
                current = current.with_pid(e.name, None)
        save_testnet(current)
    if still:
        raise TestnetError("could not stop " + ", ".join(f"{e.name} (pid {e.pid})" for e in still))
    print(f"stopped {len(running)} node(s)" + ("" if running else " (none was running)"), file=out)
    if remove:
        _reset(home)
        print(f"removed {home}", file=out)
    return 0
