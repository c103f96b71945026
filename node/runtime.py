"""The asyncio shell around NodeCore: TCP, SQLite, JSON-RPC, the miner, signals, logs.

This module decides nothing (DESIGN.md section 2). One driver task feeds inputs to the
core and applies each `Ready` in order:

  1. persist its blocks, peer addresses, acknowledged transactions and the validator's
     slashing-protection record (one durable SQLite transaction; nothing of this Ready
     is visible to anyone before it commits, so no vote or block leaves unprotected),
  2. send: frames go to per-peer bounded queues; a peer whose queue is full cannot
     keep up and is disconnected; closes and dials follow,
  3. reply to RPC calls, hand new work to the miner, write log lines,
  4. sleep until the next input or the core's wake-up time.

Inputs arrive through one bounded inbox, so a flood of bytes or calls slows its
producers (TCP reads stop, RPC handlers wait) instead of growing memory. Inputs that
are waiting when the driver wakes are stepped together and answered by one Ready, so
a burst of transactions costs one fsync, not one each.

Timeouts: connect (CONNECT_TIMEOUT_S) and write (WRITE_TIMEOUT_S) here; the handshake
and read (silence) timeouts are the core's (P2PConfig.handshake_timeout_ms and
peer_timeout_ms), driven by its ticks, so the simulator tests them too.

Faults (node/faults.py, set over the admin_* RPC methods, which this shell answers
itself) act on this node's own traffic only: frames to a peer are dropped, lost or
delayed as they enter its send queue, frames from a peer are discarded whole as they
are read, a cut peer's connections are closed right after the handshake (to the core
that is a closed socket, no offence), and the clock reads wall time plus the skew.
"""

import asyncio
import errno
import random
import secrets
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from consensus.crypto import KeyPair
from consensus.genesis import Genesis
from node.core import (
    INVALID_PARAMS,
    BytesReceived,
    DialFailed,
    Input,
    MinerReport,
    NodeConfig,
    NodeCore,
    PeerConnected,
    PeerDisconnected,
    Ready,
    RpcCalled,
    RpcError,
    Tick,
)
from node.faults import ADMIN_METHODS, FaultLayer, FaultsError, FrameGate, check_no_params, parse_faults
from node.logs import log_core_event
from node.miner import Miner
from node.rpc_server import RpcServer
from node.settings import COOKIE_FILE, STORE_FILE, Settings, SettingsError, parse_address, write_private
from node.store import SqliteStore, StoreError

CONNECT_TIMEOUT_S = 5.0
WRITE_TIMEOUT_S = 20.0  # a peer that reads nothing for this long is dropped
READ_CHUNK_BYTES = 64 * 1024
INBOX_EVENTS_MAX = 1_024  # x READ_CHUNK_BYTES bounds what the inbox can hold (64 MiB)
BATCH_EVENTS_MAX = 512  # inputs stepped before one Ready
TICK_EVERY_MS = 20  # how stale the core's clock may be when it handles an input
_CLOSE = object()  # in a send queue: flush what is before it, then close


def now_ms() -> int:
    return int(time.time() * 1000)


class StartupError(Exception):
    """The node cannot start for a reason a person can fix (port in use, bad store)."""


@dataclass(eq=False)
class Link:
    conn_id: int
    address: str
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    tasks: list[asyncio.Task] = field(default_factory=list)
    closed_by_core: bool = False
    node_id: str | None = None  # the peer's, once the core has done its handshake
    gate: FrameGate = field(default_factory=FrameGate)  # frame boundaries of what we read (drop_in)
    cut: str = ""  # why a fault closed it; said to the core instead of the socket's error


class NodeRuntime:
    def __init__(self, home: Path, settings: Settings, genesis: Genesis, key: KeyPair, log: Any,
                 config: NodeConfig | None = None, handle_signals: bool = True,
                 validator_key: KeyPair | None = None):
        self.handle_signals = handle_signals
        self.home = home
        self.settings = settings
        self.genesis = genesis
        self.key = key
        self.validator_key = validator_key  # proof of stake: sign as this validator; None: only follow
        self.log = log
        self.config = config  # made once the P2P port is bound (port 0 picks one)
        self.inbox: asyncio.Queue[Input] = asyncio.Queue(maxsize=INBOX_EVENTS_MAX)
        self.local: list[Input] = []  # inputs the driver makes itself (it must never wait on the inbox)
        self.links: dict[int, Link] = {}
        self._conn_seq = 0
        self._rpc_seq = 0
        self._pending: dict[int, asyncio.Future] = {}
        self._stop = asyncio.Event()
        self._stopping = False
        self.tg: asyncio.TaskGroup | None = None
        self._tasks: set[asyncio.Task] = set()  # every task of the group but the main one
        self.core: NodeCore | None = None
        self.store: SqliteStore | None = None
        self.miner: Miner | None = None
        self.server: asyncio.Server | None = None
        self.rpc: RpcServer | None = None
        self.p2p_port = 0
        self.rpc_port = 0
        self.started = asyncio.Event()
        self._wake_at_ms = 0
        self._last_tick_ms = 0
        self.faults = FaultLayer()

    # --- lifecycle -------------------------------------------------------------------

    def request_stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        """Run until SIGTERM/SIGINT or request_stop(); clean up in every case."""
        loop = asyncio.get_running_loop()
        if self.handle_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.request_stop)
        try:
            self._open_store()
            await self._start_listeners()  # outside the group, so a bind error stays a plain StartupError
            if self.config is None:
                s = self.settings
                self.config = NodeConfig(listen_address=s.advertise or f"{s.p2p_host}:{self.p2p_port}",
                                         bootstrap=s.bootstrap, mining_enabled=s.mining,
                                         byzantine=frozenset(s.byzantine))
            self._make_core()
            async with asyncio.TaskGroup() as tg:
                self.tg = tg
                self.miner = Miner(self.settings.hashrate, self.inbox.put)
                self._spawn(self.miner.run(), "miner")
                self._spawn(self._drive(), "driver")
                self.started.set()
                self.log.info("node_started", p2p=f"{self.settings.p2p_host}:{self.p2p_port}",
                              rpc=f"http://{self.settings.rpc_host}:{self.rpc_port}",
                              advertise=self.config.listen_address, height=self.core.tree.head.height,
                              mining=self.settings.mining, hashrate_cap=self.settings.hashrate)
                await self._stop.wait()
                await self._shutdown()
        finally:
            if self.server is not None:
                self.server.close()
            if self.rpc is not None:
                await self.rpc.stop()
            self._cleanup()

    def _open_store(self) -> None:
        try:
            self.store = SqliteStore(self.home / STORE_FILE, genesis_hash=self.genesis.hash)
        except StoreError as exc:
            raise StartupError(str(exc)) from None

    def _make_core(self) -> None:
        assert self.store is not None and self.config is not None
        started = time.monotonic()
        blocks = self.store.load_blocks()
        transactions = self.store.load_transactions()
        protection = self.store.load_protection()
        self.core = NodeCore(self.genesis, self.key, self.config, random.Random(secrets.randbits(128)), self._now_ms(),
                             stored_blocks=blocks, stored_transactions=transactions,
                             validator_key=self.validator_key, stored_protection=protection)
        for address in self.store.load_peers():
            self.core.add_peer_address(address)
        self.log.info("store_loaded", blocks=len(blocks), transactions=len(transactions),
                      protection_record=protection is not None, height=self.core.tree.head.height,
                      seconds=round(time.monotonic() - started, 3))
        if self.config.byzantine:
            self.log.warning("byzantine_enabled", behaviours=sorted(self.config.byzantine),
                             validator=self.validator_key.public_key.hex() if self.validator_key else None)

    async def _start_listeners(self) -> None:
        s = self.settings
        try:
            self.server = await asyncio.start_server(self._accept, s.p2p_host, s.p2p_port, limit=READ_CHUNK_BYTES)
        except OSError as exc:
            raise StartupError(_bind_error("P2P", s.p2p_host, s.p2p_port, exc, "--p2p-port")) from None
        self.p2p_port = self.server.sockets[0].getsockname()[1]
        token = secrets.token_hex(32)
        self.rpc = RpcServer(self._call, token, self._health)
        try:
            self.rpc_port = await self.rpc.start(s.rpc_host, s.rpc_port)
        except OSError as exc:
            raise StartupError(_bind_error("RPC", s.rpc_host, s.rpc_port, exc, "--rpc-port")) from None
        write_private(self.home / COOKIE_FILE, token + "\n")

    async def _shutdown(self) -> None:
        """Stop accepting, stop the miner, close peer sockets; the TaskGroup then ends."""
        self._stopping = True
        self.log.info("node_stopping")
        if self.server is not None:
            self.server.close()
        if self.rpc is not None:
            await self.rpc.stop()
        for link in list(self.links.values()):
            link.writer.close()
        for future in self._pending.values():
            future.cancel()
        for task in list(self._tasks):
            task.cancel()

    def _cleanup(self) -> None:
        if self.miner is not None:
            self.miner.close()
        if self.store is not None:
            self.store.close()  # every Ready was committed before its effects; nothing to flush
        try:
            (self.home / COOKIE_FILE).unlink(missing_ok=True)
        except OSError as exc:
            self.log.warning("cookie_not_removed", error=str(exc))
        for future in self._pending.values():
            if not future.done():
                future.cancel()
        self.log.info("node_stopped")

    # --- the driver -------------------------------------------------------------------

    async def _drive(self) -> None:
        core = self.core
        assert core is not None
        self._wake_at_ms = 0
        while True:
            batch: list[Input] = []
            if self.local:
                batch, self.local = self.local, []
            else:
                delay = (self._wake_at_ms - self._now_ms()) / 1000
                if delay > 0:
                    try:
                        async with asyncio.timeout(delay):
                            batch.append(await self.inbox.get())
                    except TimeoutError:
                        pass  # nothing arrived before the wake-up time: tick
            while len(batch) < BATCH_EVENTS_MAX and not self.inbox.empty():
                batch.append(self.inbox.get_nowait())
            now = self._now_ms()
            if now >= self._wake_at_ms or now - self._last_tick_ms >= TICK_EVERY_MS:
                core.step(Tick(now))
                self._last_tick_ms = now
            for event in batch:
                core.step(event)
            ready = core.ready()
            self._apply(ready)
            core.advance(ready)
            self._wake_at_ms = ready.wake_at_ms

    def _apply(self, ready: Ready) -> None:
        assert self.store is not None and self.miner is not None
        # 1. persist: durable before anything of this Ready leaves the process (the
        #    protection record too: it covers every vote and block in these sends).
        self.store.persist(ready.persist_blocks, ready.persist_peers, ready.persist_transactions,
                           ready.persist_protection)
        # 2. send, close, dial.
        faulty = self.faults.active
        if faulty:
            self._apply_cuts()
        for conn_id, data in ready.sends:
            link = self.links.get(conn_id)
            if link is None:
                continue
            item: Any = data
            if faulty:
                data, delay_ms = self.faults.filter_out(self._peer_id(link), data)
                if not data:
                    continue
                # Delayed: the writer holds it until then; the bounded queue still applies.
                item = (time.monotonic() + delay_ms / 1000, data) if delay_ms else data
            try:
                link.queue.put_nowait(item)
            except asyncio.QueueFull:
                self._drop(link, f"send queue full ({self.config.p2p.peer_send_queue_frames_max} writes): "
                                 "the peer cannot keep up")
        for conn_id in ready.closes:
            link = self.links.pop(conn_id, None)
            if link is not None:
                link.closed_by_core = True
                try:
                    link.queue.put_nowait(_CLOSE)
                except asyncio.QueueFull:
                    link.writer.transport.abort()
        for address in ready.dials:
            assert self.tg is not None
            if not self._stopping:
                self._spawn(self._guard(self._dial(address), None), f"dial-{address}")
        # 3. miner, replies, logs.
        if ready.mining_changed:
            self.miner.set_work(ready.mining)
        for reply in ready.replies:
            future = self._pending.pop(reply.request_id, None)
            if future is not None and not future.done():
                future.set_result(reply)
        for fields in ready.logs:
            log_core_event(self.log, fields)

    # --- connections ---------------------------------------------------------------------

    def _register(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, address: str) -> Link:
        self._conn_seq += 1
        link = Link(self._conn_seq, address, reader, writer,
                    asyncio.Queue(maxsize=self.config.p2p.peer_send_queue_frames_max))
        self.links[link.conn_id] = link
        return link

    def _start_link(self, link: Link) -> None:
        link.tasks = [
            self._spawn(self._guard(self._read(link), link), f"peer-{link.conn_id}-read"),
            self._spawn(self._guard(self._write(link), link), f"peer-{link.conn_id}-write"),
        ]

    def _spawn(self, coro: Any, name: str) -> asyncio.Task:
        assert self.tg is not None
        task = self.tg.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _guard(self, coro: Any, link: Link | None) -> None:
        """A fault in one connection's task is logged and costs that connection only."""
        try:
            await coro
        except Exception as exc:  # noqa: BLE001 - logged with its traceback, then contained
            self.log.error("connection_task_failed", conn=link.conn_id if link else None, exc_info=exc)
            if link is not None:
                await self._lost(link, f"internal error: {exc!r}")

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self.started.wait()  # connections may arrive before the task group runs
        if self._stopping:
            writer.close()
            return
        peer = writer.get_extra_info("peername")
        address = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        link = self._register(reader, writer, address)
        await self.inbox.put(PeerConnected(link.conn_id, False, address))
        self._start_link(link)

    async def _dial(self, address: str) -> None:
        try:
            host, port = parse_address(address)
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                reader, writer = await asyncio.open_connection(host, port, limit=READ_CHUNK_BYTES)
        except SettingsError as exc:
            await self.inbox.put(DialFailed(address, str(exc)))
            return
        except TimeoutError:
            await self.inbox.put(DialFailed(address, f"connect timed out after {CONNECT_TIMEOUT_S:g} s"))
            return
        except OSError as exc:
            await self.inbox.put(DialFailed(address, exc.strerror or str(exc)))
            return
        link = self._register(reader, writer, address)
        await self.inbox.put(PeerConnected(link.conn_id, True, address))
        self._start_link(link)

    async def _read(self, link: Link) -> None:
        error = "connection closed by the peer"
        try:
            while True:
                data = await link.reader.read(READ_CHUNK_BYTES)
                if not data:
                    break
                # Always through the gate, so it knows where frames start when drop_in begins.
                data = self.faults.filter_in(link.gate, self._peer_id(link) if self.faults.active else None, data)
                if data:
                    await self.inbox.put(BytesReceived(link.conn_id, data))
        except (ConnectionError, OSError) as exc:
            error = f"read failed: {exc.strerror or exc!r}"
        await self._lost(link, error)

    async def _write(self, link: Link) -> None:
        error = ""
        try:
            while True:
                item = await link.queue.get()
                if item is _CLOSE:
                    break
                if isinstance(item, tuple):  # delayed by a fault: (monotonic time due, bytes)
                    due, item = item
                    if due > time.monotonic():
                        await asyncio.sleep(due - time.monotonic())
                link.writer.write(item)
                async with asyncio.timeout(WRITE_TIMEOUT_S):
                    await link.writer.drain()
        except TimeoutError:
            error = f"the peer read nothing for {WRITE_TIMEOUT_S:g} s"
        except (ConnectionError, OSError) as exc:
            error = f"write failed: {exc.strerror or exc!r}"
        link.writer.close()
        if error:
            await self._lost(link, error)

    async def _lost(self, link: Link, error: str) -> None:
        """The socket failed or the peer closed it: tell the core once, unless it closed it."""
        error = link.cut or error
        link.writer.close()
        if self.links.pop(link.conn_id, None) is not None and not link.closed_by_core:
            await self.inbox.put(PeerDisconnected(link.conn_id, error))
        for task in link.tasks:
            if task is not asyncio.current_task():
                task.cancel()

    def _drop(self, link: Link, error: str) -> None:
        """The driver gives up on a peer (it must not wait on the inbox, so `local`)."""
        self.links.pop(link.conn_id, None)
        link.writer.transport.abort()
        for task in link.tasks:
            task.cancel()
        self.local.append(PeerDisconnected(link.conn_id, error))

    # --- faults -----------------------------------------------------------------------------

    def _now_ms(self) -> int:
        """The node's clock: every Tick and the core's first time come from here.

        A negative skew set on a running node holds the core's clock still until wall
        time plus the skew passes what it last read: the core's time never goes back."""
        return now_ms() + self.faults.clock_skew_ms

    def _peer_id(self, link: Link) -> str | None:
        """The peer's node id once the core has done the handshake (read between steps)."""
        if link.node_id is None and self.core is not None:
            peer = self.core.peers.get(link.conn_id)
            if peer is not None:
                link.node_id = peer.node_id
        return link.node_id

    def _apply_cuts(self) -> None:
        """Close every connection to a cut-off peer (set by a fault, or handshaken since).
        The read task then reports a PeerDisconnected; the core backs off and redials."""
        for link in list(self.links.values()):
            if not link.cut and self.faults.is_cut(self._peer_id(link)):
                link.cut = f"cut off by a fault (admin_setFaults) from {link.node_id}"
                self.faults.counters.connections_refused += 1
                link.writer.transport.abort()

    async def _admin(self, method: str, params: Any) -> dict:
        """admin_setFaults / admin_getFaults / admin_clearFaults, answered by the shell."""
        try:
            faults = parse_faults(params) if method == "admin_setFaults" else None
            if faults is None:
                check_no_params(method, params)
        except FaultsError as exc:
            raise RpcError(INVALID_PARAMS, str(exc)) from None
        if method == "admin_getFaults":
            return self.faults.to_json()
        if faults is None:
            self.faults.clear()
        else:
            self.faults.set(faults)
        self._apply_cuts()
        self.log.info("faults_set", method=method, **self.faults.summary())
        # Wake the driver, so a new clock skew reaches the core now, not at its next wake-up.
        await self.inbox.put(Tick(self._now_ms()))
        return self.faults.to_json()

    # --- RPC ------------------------------------------------------------------------------------

    async def _call(self, method: str, params: Any) -> Any:
        if method in ADMIN_METHODS:
            return await self._admin(method, params)
        self._rpc_seq += 1
        request_id = self._rpc_seq
        future = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            await self.inbox.put(RpcCalled(request_id, method, params))
            reply = await future
        finally:
            self._pending.pop(request_id, None)
        if reply.error is not None:
            raise RpcError(*reply.error)
        return reply.result

    def _health(self) -> dict:
        core = self.core
        if core is None:
            return {"status": "starting", "name": self.settings.name}
        return {"status": "ok", "name": self.settings.name, "node_id": core.node_id,
                "height": core.tree.head.height, "head": core.tree.head.hash.hex(),
                "peers": sum(1 for p in core.peers.values() if p.ready)}


def _bind_error(what: str, host: str, port: int, exc: OSError, flag: str) -> str:
    if exc.errno == errno.EADDRINUSE:
        return (f"{what} port {port} on {host} is in use (another node, or another program); "
                f"stop it or choose another port with {flag}")
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"cannot bind {what} to {host}: no such local address; check the host setting"
    return f"cannot listen for {what} on {host}:{port}: {exc.strerror or exc}"


async def run_node(home: Path, settings: Settings, genesis: Genesis, key: KeyPair, log: Any,
                   validator_key: KeyPair | None = None) -> None:
    runtime = NodeRuntime(home, settings, genesis, key, log, validator_key=validator_key)
    await runtime.run()

