"""A cluster of NodeCores driven by one event heap on a virtual clock.

The cluster is the simulated shell: it applies each node's Ready exactly as the
asyncio runtime does (persist, then send, then reply), runs a simulated miner, opens
and closes simulated connections, and crashes and restarts nodes from their stores.
"""

import functools
import hashlib
import heapq
import math
import random
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Callable

from consensus.crypto import KeyPair
from consensus.genesis import Genesis
from consensus.pow.difficulty import work_of_target
from consensus.types import Block, Transaction
from node.core import (
    BytesReceived,
    DialFailed,
    MinerReport,
    NodeConfig,
    NodeCore,
    PeerConnected,
    PeerDisconnected,
    Ready,
    RpcCalled,
    RpcReply,
    Tick,
)
from p2p.framing import LENGTH_BYTES
from sim.network import SimNetwork

DIAL_FAIL_MS = 1_000  # how long a dial into a cut or to a dead node takes to fail
CONNECT_MS = 5  # a successful dial's setup time on top of the link latency


def split_frames(data: bytes) -> list[bytes]:
    frames, i = [], 0
    while i < len(data):
        length = int.from_bytes(data[i:i + LENGTH_BYTES], "big")
        frames.append(data[i:i + LENGTH_BYTES + length])
        i += LENGTH_BYTES + length
    return frames


@dataclass
class MemoryStore:
    """What a node persisted: blocks in the order they were written, peer addresses, and
    the latest transactions acknowledged to clients (as many as a mempool holds)."""

    blocks: list[Block] = field(default_factory=list)
    peers: list[str] = field(default_factory=list)
    transactions: list[Transaction] = field(default_factory=list)
    transactions_max: int = 20_000
    protection: bytes | None = None  # a validator's slashing-protection record


@dataclass
class SimNode:
    index: int
    key: KeyPair
    config: NodeConfig
    hashrate: float  # hashes per second of this node's simulated miner
    store: MemoryStore = field(default_factory=MemoryStore)
    validator: KeyPair | None = None  # proof of stake: this node's validator key
    core: NodeCore | None = None
    up: bool = True
    incarnation: int = 0  # bumped at each crash, so stale timers are ignored
    mining_token: int = 0
    mining_started_ms: int = 0
    mining_work_id: int | None = None
    next_tick_ms: int | None = None  # on the cluster's clock
    paused: bool = False  # SIGSTOP: inputs wait in `deferred` until resumed, nothing runs
    deferred: list = field(default_factory=list)  # (kind, payload) that arrived while paused
    skew_ms: int = 0  # the node's clock reads the cluster's clock plus this

    @property
    def address(self) -> str:
        return self.config.listen_address


@dataclass
class Link:
    owner: int  # node index
    peer_node: int
    peer_conn: int
    last_ordered_ms: float = 0.0
    incarnation: int = 0


@functools.lru_cache(maxsize=None)
def _event_name(kind: type) -> bytes:
    return kind.__name__.encode()


class Cluster:
    def __init__(
        self,
        genesis: Genesis,
        node_count: int,
        seed: int,
        *,
        hashrates: list[float] | None = None,
        config_for: Callable[[int, list[str]], NodeConfig] | None = None,
        start_ms: int | None = None,
        validator_keys: list[KeyPair | None] | None = None,
    ):
        self.genesis = genesis
        self.seed = seed
        self.now_ms = start_ms if start_ms is not None else genesis.timestamp_ms + 1_000
        self.rng = random.Random(f"{seed}/cluster")
        self.network = SimNetwork(random.Random(f"{seed}/network"))
        self._heap: list[tuple[float, int, str, Any]] = []
        self._seq = 0
        self._conn_seq = 0
        self.links: dict[int, Link] = {}  # conn id -> link at the owning end
        self.digest = hashlib.sha256()
        self.events_processed = 0
        self.replies: dict[int, RpcReply] = {}
        self._rpc_seq = 0
        self.logs: list[tuple[int, int, dict]] = []
        self.keep_logs = False
        self.hooks: list[Callable[["Cluster"], None]] = []  # run after every event (invariant checks)
        self.last_stepped: int | None = None  # the node the last event went to
        addresses = [f"sim:{i}" for i in range(node_count)]
        hashrates = hashrates or [1.0] * node_count
        self.nodes: list[SimNode] = []
        for i in range(node_count):
            config = config_for(i, addresses) if config_for else default_config(i, addresses)
            self.nodes.append(SimNode(i, KeyPair.derive(f"sim-{seed}", "node", i), config, hashrates[i],
                                      validator=validator_keys[i] if validator_keys else None))
        # Boot only once every node exists, so early dials find their targets.
        for node in self.nodes:
            self._boot(node)

    # --- event heap ---------------------------------------------------------------

    def schedule(self, at_ms: float, kind: str, payload: Any) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (at_ms, self._seq, kind, payload))

    def run_until(self, end_ms: int) -> None:
        while self._heap and self._heap[0][0] <= end_ms:
            at, _, kind, payload = heapq.heappop(self._heap)
            self.now_ms = max(self.now_ms, int(at))
            self._dispatch(kind, payload)
            self.events_processed += 1
            for hook in self.hooks:
                hook(self)
        self.now_ms = max(self.now_ms, end_ms)

    def _target(self, kind: str, payload: Any) -> int | None:
        """The node an event is for (None: the cluster itself)."""
        if kind in ("tick", "dial", "dial_failed", "mined"):
            return payload[0]
        if kind in ("deliver", "accepted"):
            link = self.links.get(payload[0])
            return link.owner if link is not None else None
        if kind == "closed":
            link = self.links.get(payload)
            return link.owner if link is not None else None
        return None

    def _dispatch(self, kind: str, payload: Any) -> None:
        if kind not in ("call", "tick", "mined"):
            target = self._target(kind, payload)
            if target is not None and self.nodes[target].paused:
                # A stopped process reads nothing; the kernel keeps what arrives for it.
                self.nodes[target].deferred.append((kind, payload))
                return
        if kind == "tick":
            index, incarnation = payload
            node = self.nodes[index]
            if node.up and not node.paused and node.incarnation == incarnation and node.next_tick_ms is not None \
                    and node.next_tick_ms <= self.now_ms:
                node.next_tick_ms = None
                self._step(node, Tick(self.now_ms + node.skew_ms))
        elif kind == "deliver":
            conn_id, frame = payload
            link = self.links.get(conn_id)
            if link is not None:
                self._step(self.nodes[link.owner], BytesReceived(conn_id, frame))
        elif kind == "closed":
            conn_id = payload
            link = self.links.pop(conn_id, None)
            if link is not None:
                self._step(self.nodes[link.owner], PeerDisconnected(conn_id, "connection closed by the peer"))
        elif kind == "dial":
            self._complete_dial(*payload)
        elif kind == "dial_failed":
            index, incarnation, address = payload
            node = self.nodes[index]
            if node.up and node.incarnation == incarnation:
                self._step(node, DialFailed(address, "unreachable"))
        elif kind == "mined":
            index, token, work_id = payload
            node = self.nodes[index]
            if node.up and node.mining_token == token:
                hashes = self._hashes_since(node)
                node.mining_token += 1  # this find ends the work
                node.mining_work_id = None
                self._step(node, MinerReport(work_id, 0, hashes))
        elif kind == "accepted":
            conn_id, address = payload
            link = self.links.get(conn_id)
            if link is not None:
                self._step(self.nodes[link.owner], PeerConnected(conn_id, False, address))
        elif kind == "call":
            fn = payload
            fn(self)
        else:
            raise AssertionError(kind)

    # --- applying a node's Ready ------------------------------------------------------

    def _step(self, node: SimNode, event: Any) -> None:
        assert node.core is not None and node.up
        self.last_stepped = node.index
        self.digest.update(b"%d|%d|%s|" % (self.now_ms, node.index, _event_name(type(event))))
        if isinstance(event, BytesReceived):
            self.digest.update(event.data)
        node.core.step(event)
        self._apply(node, node.core.ready())

    def _apply(self, node: SimNode, ready: Ready) -> None:
        core = node.core
        assert core is not None
        # 1. persist: durable before anyone can see it.
        node.store.blocks.extend(ready.persist_blocks)
        node.store.peers.extend(ready.persist_peers)
        if ready.persist_transactions:
            node.store.transactions.extend(ready.persist_transactions)
            del node.store.transactions[: -node.store.transactions_max]
        if ready.persist_protection is not None:
            node.store.protection = ready.persist_protection
        # 2. send.
        for conn_id, data in ready.sends:
            self._send(conn_id, data)
        for conn_id in ready.closes:
            self._close(conn_id)
        for address in ready.dials:
            self._dial(node, address)
        # 3. mining and replies.
        if ready.mining_changed:
            self._restart_miner(node, ready)
        for reply in ready.replies:
            self.replies[reply.request_id] = reply
        if self.keep_logs:
            for log in ready.logs:
                self.logs.append((self.now_ms, node.index, log))
        core.advance(ready)
        wake_ms = ready.wake_at_ms - node.skew_ms  # the node's clock, on the cluster's
        if node.next_tick_ms is None or wake_ms < node.next_tick_ms:
            node.next_tick_ms = wake_ms
            self.schedule(wake_ms, "tick", (node.index, node.incarnation))

    def _send(self, conn_id: int, data: bytes) -> None:
        link = self.links.get(conn_id)
        if link is None:
            return
        for delay, frame, ordered in self.network.plan_frames(link.owner, link.peer_node, split_frames(data)):
            at = self.now_ms + delay
            # A stream never delivers a frame before the ordered frames sent earlier.
            at = max(at, link.last_ordered_ms)
            if ordered:
                link.last_ordered_ms = at
            self.schedule(at, "deliver", (link.peer_conn, frame))

    def _close(self, conn_id: int) -> None:
        link = self.links.pop(conn_id, None)
        if link is None:
            return
        # The peer learns of the close after the frames already in flight (a FIN).
        at = max(self.now_ms + self.network.latency(link.owner, link.peer_node), link.last_ordered_ms)
        self.schedule(at, "closed", link.peer_conn)

    def _dial(self, node: SimNode, address: str) -> None:
        target = self._index_of(address)
        if target is None or target == node.index:
            self.schedule(self.now_ms + DIAL_FAIL_MS, "dial_failed", (node.index, node.incarnation, address))
            return
        at = self.now_ms + self.network.latency(node.index, target) + CONNECT_MS
        self.schedule(at, "dial", (node.index, node.incarnation, target, address))

    def _complete_dial(self, index: int, incarnation: int, target: int, address: str) -> None:
        node, peer = self.nodes[index], self.nodes[target]
        if not (node.up and node.incarnation == incarnation):
            return
        if not peer.up or self.network.is_blocked(index, target) or self.network.is_blocked(target, index):
            self.schedule(self.now_ms + DIAL_FAIL_MS, "dial_failed", (index, incarnation, address))
            return
        self._conn_seq += 2
        a, b = self._conn_seq - 1, self._conn_seq
        self.links[a] = Link(index, target, b, self.now_ms)
        self.links[b] = Link(target, index, a, self.now_ms)
        if peer.paused:
            peer.deferred.append(("accepted", (b, node.address)))  # in its accept queue meanwhile
        else:
            self._step(peer, PeerConnected(b, False, node.address))
        if a in self.links:
            self._step(node, PeerConnected(a, True, address))

    def _index_of(self, address: str) -> int | None:
        if not address.startswith("sim:"):
            return None
        try:
            index = int(address[4:])
        except ValueError:
            return None
        return index if 0 <= index < len(self.nodes) else None

    # --- the simulated miner -------------------------------------------------------------

    def _hashes_since(self, node: SimNode) -> int:
        return int(node.hashrate * (self.now_ms - node.mining_started_ms) / 1000)

    def _restart_miner(self, node: SimNode, ready: Ready) -> None:
        assert node.core is not None
        if node.mining_work_id is not None:
            # The replaced work's hashes still count (energy accounting).
            node.core.hashes_tried += self._hashes_since(node)
        node.mining_token += 1
        node.mining_work_id = None
        work = ready.mining
        if work is None or node.hashrate <= 0:
            return
        # Finding a block is a Poisson process: rate = hashrate / expected hashes.
        rate_per_ms = node.hashrate / work_of_target(work.target) / 1000
        delay = self.rng.expovariate(rate_per_ms) if rate_per_ms > 0 else math.inf
        node.mining_started_ms = self.now_ms
        node.mining_work_id = work.work_id
        if delay < 1e15:
            self.schedule(self.now_ms + delay, "mined", (node.index, node.mining_token, work.work_id))

    # --- nodes: boot, crash, restart ---------------------------------------------------------

    def _boot(self, node: SimNode) -> None:
        node.core = NodeCore(
            self.genesis,
            node.key,
            node.config,
            random.Random(f"{self.seed}/node/{node.index}/{node.incarnation}"),
            self.now_ms + node.skew_ms,
            stored_blocks=list(node.store.blocks),
            stored_transactions=list(node.store.transactions),
            skip_pow_check_for_simulation=True,
            validator_key=node.validator,
            stored_protection=node.store.protection,
        )
        for address in node.store.peers:
            node.core.add_peer_address(address)
        node.up = True
        node.next_tick_ms = None
        self._step(node, Tick(self.now_ms))

    def crash(self, index: int) -> None:
        """Stop a node at once: what it persisted stays, everything else is lost."""
        node = self.nodes[index]
        if not node.up:
            return
        node.up = False
        node.paused = False
        node.deferred.clear()  # what the kernel held for a dead process is gone with it
        node.incarnation += 1
        node.mining_token += 1
        node.mining_work_id = None
        node.core = None
        for conn_id in sorted(c for c, link in self.links.items() if link.owner == index):
            self._close(conn_id)

    def restart(self, index: int) -> None:
        node = self.nodes[index]
        if node.up:
            return
        self._boot(node)

    def pause(self, index: int) -> None:
        """SIGSTOP: the node keeps its memory and connections but runs nothing: no ticks,
        no mining, and what peers send it waits, in order, until `resume`."""
        node = self.nodes[index]
        if not node.up or node.paused:
            return
        node.paused = True
        if node.mining_work_id is not None:
            assert node.core is not None
            node.core.hashes_tried += self._hashes_since(node)
        node.mining_token += 1  # a find scheduled for the running miner never happens
        node.mining_work_id = None

    def resume(self, index: int) -> None:
        """SIGCONT: the node reads what waited for it, its timers fire, its miner goes on."""
        node = self.nodes[index]
        if not node.up or not node.paused:
            return
        node.paused = False
        waiting, node.deferred = node.deferred, []
        for kind, payload in waiting:
            self._dispatch(kind, payload)
        if node.up and node.core is not None:
            self._restart_miner(node, SimpleNamespace(mining=node.core.work))  # the work it had
            node.next_tick_ms = self.now_ms
            self.schedule(self.now_ms, "tick", (node.index, node.incarnation))

    def set_skew(self, index: int, skew_ms: int) -> None:
        """Set how far the node's clock is off the cluster's (it notices at its next tick,
        which is now; a clock set back waits, as the core never lets time go back)."""
        node = self.nodes[index]
        node.skew_ms = skew_ms
        if node.up and not node.paused:
            node.next_tick_ms = self.now_ms
            self.schedule(self.now_ms, "tick", (node.index, node.incarnation))

    # --- clients --------------------------------------------------------------------------------

    def rpc(self, index: int, method: str, params: Any = None) -> int:
        """Call a method on a node now; the reply lands in `self.replies[request id]`."""
        self._rpc_seq += 1
        node = self.nodes[index]
        if node.up and not node.paused:  # a stopped process does not answer
            self._step(node, RpcCalled(self._rpc_seq, method, params if params is not None else []))
        return self._rpc_seq

    def at(self, at_ms: float, fn: Callable[["Cluster"], None]) -> None:
        self.schedule(at_ms, "call", fn)

    def up_nodes(self) -> list[SimNode]:
        return [n for n in self.nodes if n.up]


def default_config(index: int, addresses: list[str]) -> NodeConfig:
    """Each node dials its two ring neighbours; peer exchange does the rest."""
    n = len(addresses)
    bootstrap = tuple(sorted({addresses[(index + 1) % n], addresses[(index + 2) % n]} - {addresses[index]}))
    return NodeConfig(listen_address=addresses[index], bootstrap=bootstrap, mining_enabled=True)
