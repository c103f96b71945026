"""NodeCore: the whole node as a deterministic state machine (DESIGN.md section 2).

It composes the block tree and engine, the mempool, and the peer-to-peer protocol.
The shell (node.runtime, or the simulator) feeds it inputs with `step`, takes the
effects with `ready`, applies them in order (persist, then send, then reply) and
acknowledges with `advance`. Nothing here waits, reads a clock or draws global
randomness: time arrives in inputs, randomness is a seeded `rng` argument.

    core.step(Tick(now_ms)) / step(BytesReceived(...)) / step(RpcCalled(...)) ...
    ready = core.ready()       # effects and the next wake-up time
    ... persist ready.persist_blocks, send ready.sends, close, dial, mine, reply ...
    core.advance(ready)
"""

from dataclasses import dataclass, field
from typing import Any, Iterable, NamedTuple

from consensus.chain import Added, BlockTree, Template
from consensus.crypto import KeyPair, address_of
from consensus.engine import make_engine
from consensus.errors import (
    DecodeError,
    DuplicateBlock,
    FutureBlock,
    InvalidSignature,
    InvalidTransaction,
    ReorgTooDeep,
    UnknownParent,
    ValidationError,
    WrongChain,
)
from consensus.genesis import Genesis
from consensus.pow.difficulty import compact_to_target
from consensus.pow.mining import header_prefix, with_nonce
from consensus.types import Block, Transaction, decode_block, decode_transaction
from node.byzantine import SelfishMiner, Spammer
from node.mempool import Mempool, MempoolRejected
from p2p.config import P2PConfig
from p2p.connection import (
    Connection,
    ConnectionClosed,
    HandshakeCompleted,
    LocalIdentity,
    MessageReceived,
    State as ConnState,
    node_id_of,
)
from p2p.errors import HandshakeFailed, Reason
from p2p.gossip import GossipRouter, Rng, SeenCache, Verdict
from p2p.messages import (
    Blocks,
    GetBlocksByHash,
    GetBlocksByRange,
    GetPeers,
    Gossip,
    GossipBatch,
    HeadSummary,
    Peers,
    Ping,
    Pong,
    Status,
    Topic,
)
from p2p.scoring import Offence, PeerScores
from p2p.sync import OrphanPool, PendingRequest

# --- configuration -----------------------------------------------------------------

# Gossip queued for one peer in one step goes out in batches this large at most: well
# inside a frame (4 MiB) and the decoder's list bound (4096), and small enough that a
# receiver's one step stays short.
GOSSIP_BATCH_ITEMS_MAX = 1_024
GOSSIP_BATCH_BYTES_MAX = 1024 * 1024


@dataclass(frozen=True)
class NodeConfig:
    p2p: P2PConfig = field(default_factory=P2PConfig)
    listen_address: str = ""  # advertised to peers; "" when we accept no connections
    bootstrap: tuple[str, ...] = ()  # addresses dialled at start and redialled forever
    mining_enabled: bool = False  # mine continuously from the start
    producer: bytes | None = None  # reward address; the node key's address by default
    mempool_transactions_max: int = 20_000
    mempool_per_sender_max: int = 256  # nonces a sender may queue ahead of the chain
    block_transactions_max: int = 4_000  # what this node puts in a block it makes (consensus allows 4,096)
    mining_refresh_ms: int = 1_000  # rebuild a template for new transactions at most this often
    heartbeat_ms: int = 1_000  # the longest the core sleeps without a tick (validators also wake for their duties)
    generate_blocks_max: int = 1_000  # miner_generate(n): n at most this
    mempool_list_max: int = 1_000
    # Votes to relay wait this long to go out together (a slot's votes arrive within a
    # few tens of ms); well inside a slot, so they still reach the next proposer.
    vote_batch_ms: int = 100
    # Transactions to relay wait this long (a trickle, as Bitcoin's inventory broadcast
    # interval): they go out in batches, and the copies other peers send meanwhile show
    # who has one already, so a transaction costs about half the messages it did without
    # the wait. A hop of a transaction takes up to a second; blocks never wait.
    tx_batch_ms: int = 1_000
    # For tests and chaos runs only: make this node misbehave on purpose. A validator's
    # switches are consensus.pos.producer's; "withhold" (selfish mining) and "spam" are
    # the core's own (node/byzantine.py). Empty, i.e. honest, by default.
    byzantine: frozenset[str] = frozenset()

    def validate(self) -> None:
        self.p2p.validate()
        assert self.mempool_transactions_max >= 1 and self.block_transactions_max >= 1
        assert self.heartbeat_ms >= 1 and self.mining_refresh_ms >= 1


# --- inputs (things that happened) ------------------------------------------------


class Tick(NamedTuple):
    now_ms: int


class PeerConnected(NamedTuple):
    conn_id: int
    outbound: bool
    address: str  # the dialled address (outbound) or the remote address (inbound)


class DialFailed(NamedTuple):
    address: str
    error: str


class BytesReceived(NamedTuple):
    conn_id: int
    data: bytes


class PeerDisconnected(NamedTuple):
    conn_id: int
    error: str = ""


class RpcCalled(NamedTuple):
    request_id: int
    method: str
    params: Any  # a JSON list or object, as the client sent it


class MinerReport(NamedTuple):
    """A slice of nonce search finished: a nonce that meets the target, or None."""

    work_id: int
    nonce: int | None
    hashes: int


Input = Tick | PeerConnected | DialFailed | BytesReceived | PeerDisconnected | RpcCalled | MinerReport


# --- effects ---------------------------------------------------------------------


class MiningWork(NamedTuple):
    work_id: int
    prefix: bytes  # the header's canonical bytes before the 8-byte nonce
    target: int
    height: int
    on_demand: bool = False  # for miner_generate: the shell mines it without the hashrate cap


class RpcReply(NamedTuple):
    request_id: int
    result: Any
    error: tuple[int, str] | None  # (JSON-RPC code, message)


@dataclass
class Ready:
    now_ms: int
    persist_blocks: list[Block]
    persist_peers: list[str]
    persist_transactions: list[Transaction]  # acknowledged to a client: durable before the reply
    sends: list[tuple[int, bytes]]
    closes: list[int]
    dials: list[str]
    mining_changed: bool
    mining: MiningWork | None  # the work to do now; None means stop mining
    replies: list[RpcReply]
    logs: list[dict]
    wake_at_ms: int
    # The validator's slashing-protection record, when it signed something in this step:
    # durable before anything of this Ready is sent (a vote or block it covers).
    persist_protection: bytes | None = None

    def empty(self) -> bool:
        return not (self.persist_blocks or self.persist_peers or self.persist_transactions or self.sends or self.closes or self.dials
                    or self.mining_changed or self.replies or self.logs or self.persist_protection)


class RpcError(Exception):
    """An RPC call the node refuses; becomes a JSON-RPC error object."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


INVALID_PARAMS = -32602
METHOD_NOT_FOUND = -32601
APP_ERROR = -32000  # application errors: -32000 .. -32099
TX_REJECTED = -32010
NOT_FOUND = -32004


class Deferred:
    """Returned by an RPC method whose reply comes later (miner_generate)."""


DEFERRED = Deferred()


# --- peers --------------------------------------------------------------------------


@dataclass(eq=False)
class Peer:
    conn_id: int
    conn: Connection
    outbound: bool
    address: str
    connected_ms: int
    last_received_ms: int
    node_id: str | None = None
    listen_address: str = ""
    head: HeadSummary | None = None
    ping_nonce: int | None = None
    next_ping_ms: int = 0
    requests: int = 0  # in flight to this peer
    known_block: bytes | None = None  # the last block it sent us or we sent it

    @property
    def ready(self) -> bool:
        return self.conn.state is ConnState.READY


@dataclass
class AddressInfo:
    failures: int = 0
    next_dial_ms: int = 0
    persistent: bool = False  # bootstrap addresses are always retried
    self_address: bool = False  # dialling it reached ourselves: never again


# --- the core -------------------------------------------------------------------------


class NodeCore:
    def __init__(
        self,
        genesis: Genesis,
        node_key: KeyPair,
        config: NodeConfig,
        rng: Rng,
        now_ms: int,
        *,
        stored_blocks: Iterable[Block] = (),
        stored_transactions: Iterable[Transaction] = (),
        skip_pow_check_for_simulation: bool = False,
        validator_key: KeyPair | None = None,
        stored_protection: bytes | None = None,
    ):
        config.validate()
        self.genesis = genesis
        self.config = config
        self.p2p = config.p2p
        self.rng = rng
        self.now_ms = now_ms
        self.key = node_key
        self.node_id = node_id_of(node_key.public_key)
        self.producer = config.producer or address_of(node_key.public_key)
        self.engine = make_engine(genesis, skip_pow_check_for_simulation=skip_pow_check_for_simulation)
        self.tree = BlockTree(genesis, self.engine)
        self.mempool = Mempool(config.mempool_transactions_max, config.mempool_per_sender_max)
        self.identity = LocalIdentity(node_key, genesis.chain_id, genesis.hash, config.listen_address)
        self.router = GossipRouter(self.p2p.gossip_fanout, SeenCache(self.p2p.seen_cache_entries_max, self.p2p.seen_ttl_ms), rng)
        self.scores = PeerScores(self.p2p.ban_ms, self.p2p.score_ban_threshold)
        self.orphans = OrphanPool(self.p2p.orphan_blocks_max, self.p2p.orphan_ttl_ms)
        self.peers: dict[int, Peer] = {}  # conn id -> peer
        self.by_node_id: dict[str, int] = {}  # node id -> conn id, handshaken peers only
        self.addresses: dict[str, AddressInfo] = {}
        self.dialing: set[str] = set()
        self.requests: dict[int, PendingRequest] = {}
        self._request_seq = 0
        self.ancestor_requests: dict[bytes, int] = {}  # orphan root hash -> retry after (ms)
        # Effects waiting for `ready`.
        self._persist_blocks: list[Block] = []
        self._persist_peers: list[str] = []
        self._persist_transactions: list[Transaction] = []
        self._closes: list[int] = []
        self._closing: dict[int, Connection] = {}  # closed by us, Goodbye not yet flushed
        self._dials: list[str] = []
        self._gossip_out: dict[tuple[str, int], list[bytes]] = {}  # (peer node id, topic) -> payloads
        # Votes and transactions waiting to go on (in arrival order) -> the peers that have them.
        self._held_out: dict[int, dict[bytes, set[str]]] = {Topic.VOTES: {}, Topic.TRANSACTIONS: {}}
        self._held_flush_at_ms: dict[int, int] = {Topic.VOTES: 0, Topic.TRANSACTIONS: 0}  # held topic -> when it goes out
        self._replies: list[RpcReply] = []
        self._logs: list[dict] = []
        self._mining_changed = False
        # Mining.
        self.mining_enabled = config.mining_enabled
        self.work: MiningWork | None = None
        self._templates: dict[int, Block] = {}
        self._open_template: Template | None = None  # the block being assembled on the head
        self._work_seq = 0
        self._work_dirty = True
        self._mempool_dirty = False
        self._work_made_ms = 0
        self.generate_pending: list[list] = []  # [request_id, remaining, [hashes]]
        # Counters for status and invariants.
        self.hashes_tried = 0
        self.blocks_mined = 0
        self.reorgs = 0
        self.deepest_reorg = 0
        self.invalid_blocks_seen = 0
        self._next_status_ms = now_ms
        for address in config.bootstrap:
            self.addresses[address] = AddressInfo(persistent=True)
        self._restore(stored_blocks, stored_transactions)
        # A validator's duties (proof of stake); None where blocks come from mining.
        self.validator = (self.engine.make_producer(validator_key, stored_protection, config.byzantine)
                          if validator_key is not None else None)
        self._persist_protection: bytes | None = None
        self._votes_arrived = False
        self._duty_at = (-1, 0)  # (now_ms, the validator's next duty then)
        self.blocks_proposed = 0
        self.votes_made = 0
        self.evidence_published = 0  # slashing evidence this node's detector found and gossiped
        self.evidence_accepted = 0  # slashing evidence learned over gossip
        # The core's own byzantine switches (node/byzantine.py); None when honest. Only a
        # node whose blocks come from a miner has blocks to withhold.
        self.selfish = SelfishMiner(self.tree.head) if "withhold" in config.byzantine and self.engine.minable else None
        self.spammer = Spammer(now_ms) if "spam" in config.byzantine else None
        self._own_block: bytes | None = None  # the block our miner found, while it is imported

    # === the three calls ===========================================================

    def step(self, event: Input) -> None:
        """Apply one input. Never raises for anything a peer or client sent."""
        if isinstance(event, Tick):
            self.now_ms = max(self.now_ms, event.now_ms)
            self._on_tick()
        elif isinstance(event, BytesReceived):
            self._on_bytes(event.conn_id, event.data)
        elif isinstance(event, PeerConnected):
            self._on_connected(event)
        elif isinstance(event, PeerDisconnected):
            self._on_disconnected(event.conn_id, event.error)
        elif isinstance(event, DialFailed):
            self._on_dial_failed(event.address, event.error)
        elif isinstance(event, RpcCalled):
            self._on_rpc(event)
        elif isinstance(event, MinerReport):
            self._on_miner_report(event)
        else:
            raise AssertionError(f"unknown input {event!r}")
        if self._votes_arrived:
            # Votes can move the head without a block (LMD-GHOST). A batch of votes moves
            # it once: the fork choice is asked after the whole input, not after each vote.
            self._votes_arrived = False
            self._reconsider_head()
        # Slashing evidence the engine's detector found in this input (in votes or in
        # blocks) goes out on its own topic, so nodes that saw only one half learn it.
        for payload in self.engine.take_new_evidence(self.tree):
            self.evidence_published += 1
            self._publish(Topic.EVIDENCE, payload)
        if self.selfish is not None and self.selfish.private and not self.mining_enabled:
            # Selfish mining is a mining strategy: a node that stopped mining has nothing
            # left to race with, so what it withheld goes out.
            self._publish_blocks(self.selfish.release_all(), "miner stopped")
        self._maybe_refresh_work()

    def ready(self) -> Ready:
        self._flush_gossip()
        sends = []
        # Peers in connection order (the shells number connections upwards), so the order
        # of sends is the same on every run of the same inputs.
        for conn_id, peer in self.peers.items():
            data = peer.conn.data_to_send()
            if data:
                sends.append((conn_id, data))
        if self._closing:
            for conn_id in sorted(self._closing):
                data = self._closing[conn_id].data_to_send()
                if data:
                    sends.append((conn_id, data))
            self._closing.clear()
        now = self.now_ms
        wake = now + self.config.heartbeat_ms
        for topic, at in self._held_flush_at_ms.items():
            if now < at < wake and self._held_out[topic]:
                wake = at
        if self.validator is not None:
            if self._duty_at[0] != now:  # the clock moves only with ticks: once per tick
                self._duty_at = (now, self.validator.next_duty_ms(now))
            wake = min(wake, self._duty_at[1])
        ready = Ready(now, self._persist_blocks, self._persist_peers, self._persist_transactions, sends,
                      self._closes, self._dials, self._mining_changed, self.work, self._replies, self._logs, wake,
                      self._persist_protection)
        self._persist_blocks, self._persist_peers, self._persist_transactions = [], [], []
        self._persist_protection = None
        self._closes, self._dials = [], []
        self._replies, self._logs = [], []
        self._mining_changed = False
        return ready

    def advance(self, ready: Ready) -> None:
        """The shell applied `ready`. Effects were handed over in `ready` already, so this
        only checks the protocol: no input may arrive between ready and advance."""
        assert ready.now_ms == self.now_ms

    # === restore ========================================================================

    def _restore(self, blocks: Iterable[Block], transactions: Iterable[Transaction]) -> None:
        """Rebuild the tree from stored blocks (in the order they were persisted), then the
        mempool from the transactions acknowledged to clients.

        Blocks passed every rule before they were stored, so signatures are not checked
        again; the clock rule is skipped because a restart may come long after.
        Transactions the chain has since included or made stale are dropped quietly.
        """
        self.tree.check_signatures = False
        restored = 0
        try:
            for block in blocks:
                try:
                    added = self.tree.add_block(block, now_ms=2**62)
                except (DuplicateBlock, ReorgTooDeep):
                    continue
                restored += 1
                if added.head_changed:
                    self._note_reorg(added)
        finally:
            self.tree.check_signatures = True
        pending = 0
        for tx in transactions:
            try:
                self.mempool.add(tx, self.tree.head_state(), self.genesis.chain_id, self.tree.params,
                             verified=self.tree.verified)
                pending += 1
            except (InvalidTransaction, MempoolRejected):
                continue
        if restored or pending:
            self._log("restored", blocks=restored, transactions=pending, height=self.tree.head.height,
                      head=self.tree.head.hash.hex())

    # === time ===========================================================================

    def _on_tick(self) -> None:
        now = self.now_ms
        self.scores.expire(now)
        self.orphans.expire(now)
        for conn_id in sorted(self.peers):
            peer = self.peers.get(conn_id)
            if peer is None:
                continue
            if not peer.ready:
                if now - peer.connected_ms > self.p2p.handshake_timeout_ms:
                    self._disconnect(peer, Reason.TIMEOUT, "handshake timed out")
                continue
            if now - peer.last_received_ms > self.p2p.peer_timeout_ms:
                self._disconnect(peer, Reason.TIMEOUT, f"silent for {now - peer.last_received_ms} ms")
                continue
            if now >= peer.next_ping_ms and now - peer.last_received_ms < self.p2p.ping_interval_ms:
                # Heard from it lately: that shows it alive as well as a pong would.
                peer.next_ping_ms = peer.last_received_ms + self.p2p.ping_interval_ms
            elif now >= peer.next_ping_ms:
                peer.ping_nonce = self.rng.getrandbits(63)
                peer.conn.send(Ping(peer.ping_nonce))
                peer.next_ping_ms = now + self.p2p.ping_interval_ms
        for request_id in sorted(self.requests):
            request = self.requests[request_id]
            if request.deadline_ms <= now:
                self._finish_request(request_id)
                self._penalise_node(request.peer, Offence.REQUEST_TIMEOUT, "request timed out")
        if now >= self._next_status_ms:
            self._next_status_ms = now + self.p2p.status_interval_ms
            status = Status(self.head_summary())
            head = status.head.hash
            for peer in self._ready_peers():
                if peer.known_block == head or (peer.head is not None and peer.head.hash == head):
                    continue  # it has our head already: a Status would tell it nothing
                peer.conn.send(status)
        self._dial_more()
        self._sync_from_peers()
        self._do_duties()
        if self.spammer is not None and self.spammer.due(now):
            self._send_spam()

    def _send_spam(self) -> None:
        """Byzantine switch "spam": junk for every peer, straight on the wire as gossip."""
        assert self.spammer is not None
        block = self.spammer.invalid_block(self.tree, self.now_ms).encode()
        txs = tuple(tx.encode() for tx in self.spammer.invalid_transactions(self.tree, self.key.public_key))
        peers = self._ready_peers()
        for peer in peers:
            peer.conn.send(Gossip(Topic.BLOCKS, block))
            peer.conn.send(GossipBatch(Topic.TRANSACTIONS, txs))
        self._log("spam_sent", peers=len(peers), blocks=1, transactions=len(txs))

    def _do_duties(self) -> None:
        """A validator's proposals and votes for the current slot (proof of stake)."""
        if self.validator is None:
            return
        def candidates() -> list:  # asked for only when this validator proposes
            return self.mempool.select(self.tree.head_state(), self.config.block_transactions_max)

        duties = self.validator.on_tick(self.tree, self.now_ms, candidates, self.config.block_transactions_max)
        if duties.protection is not None:
            self._persist_protection = duties.protection  # stored before this Ready's sends
        for text in duties.refused:
            self._log("signing_refused", reason=text)
        for block in duties.blocks:
            verdict = self._import_block(block, None)
            if verdict is Verdict.ACCEPT:
                self.blocks_proposed += 1
                self._log("block_proposed", height=block.header.height, hash=block.hash.hex(),
                          transactions=len(block.transactions))
                self._publish(Topic.BLOCKS, block.encode(), block_hash=block.hash)
            else:
                self._log("proposed_block_refused", height=block.header.height, verdict=verdict.value)
        for vote in duties.votes:
            self.votes_made += 1
            self._on_vote_payload(vote)
            self._publish(Topic.VOTES, vote)
        if duties.votes:
            self._votes_arrived = True

    def _on_vote_payload(self, payload: bytes) -> bool | None:
        return self.engine.on_vote(self.tree, payload)

    def _publish_blocks(self, blocks: list[Block], why: str) -> None:
        """Gossip blocks a selfish miner released, parents first."""
        if blocks:
            self._log("blocks_released", count=len(blocks), first_height=blocks[0].header.height,
                      last_hash=blocks[-1].hash.hex(), reason=why)
        for block in blocks:
            self._publish(Topic.BLOCKS, block.encode(), block_hash=block.hash)

    def _reconsider_head(self) -> None:
        """Votes can move the head without a block (LMD-GHOST)."""
        added = self.tree.reconsider_head()
        if added is not None:
            self._on_head_moved(added)

    # === connections =====================================================================

    def _on_connected(self, event: PeerConnected) -> None:
        assert event.conn_id not in self.peers, "the shell never reuses a live connection id"
        if event.outbound:
            self.dialing.discard(event.address)
        elif sum(1 for p in self.peers.values() if not p.outbound) >= self.p2p.peers_inbound_max:
            conn = self._new_connection()
            conn.close(Reason.TOO_MANY_PEERS, "inbound connections are full")
            self._closing[event.conn_id] = conn
            self._closes.append(event.conn_id)
            return
        if self.scores.is_banned(event.address, self.now_ms):
            conn = self._new_connection()
            conn.close(Reason.BANNED, "address is banned")
            self._closing[event.conn_id] = conn
            self._closes.append(event.conn_id)
            return
        self.peers[event.conn_id] = Peer(
            event.conn_id, self._new_connection(), event.outbound, event.address,
            connected_ms=self.now_ms, last_received_ms=self.now_ms,
        )

    def _new_connection(self) -> Connection:
        return Connection(self.identity, self.p2p, self.rng.randbytes(32), self.head_summary())

    def _on_dial_failed(self, address: str, error: str) -> None:
        self.dialing.discard(address)
        self._backoff(address)
        self._log("dial_failed", address=address, error=error)

    def _backoff(self, address: str) -> None:
        info = self.addresses.get(address)
        if info is None:
            return
        info.failures += 1
        delay = min(self.p2p.dial_backoff_max_ms, self.p2p.dial_backoff_min_ms * 2 ** min(info.failures, 16))
        # Jitter spreads redials so peers that lost each other do not dial in lockstep.
        info.next_dial_ms = self.now_ms + int(delay * (0.5 + self.rng.random()))

    def _on_disconnected(self, conn_id: int, error: str) -> None:
        peer = self.peers.pop(conn_id, None)
        if peer is None:
            return
        self._forget_peer(peer)
        if peer.outbound:
            self._backoff(peer.address)
        self._log("peer_disconnected", peer=peer.node_id, address=peer.address, error=error)

    def _forget_peer(self, peer: Peer) -> None:
        if peer.node_id is not None and self.by_node_id.get(peer.node_id) == peer.conn_id:
            del self.by_node_id[peer.node_id]
        for request_id in [r for r, req in self.requests.items() if req.peer == peer.node_id]:
            self._finish_request(request_id)

    def _disconnect(self, peer: Peer, reason: Reason, text: str) -> None:
        """Close a peer's connection from our side (Goodbye is flushed by `ready`)."""
        peer.conn.close(reason, text)
        self.peers.pop(peer.conn_id, None)
        self._closing[peer.conn_id] = peer.conn
        self._closes.append(peer.conn_id)
        self._forget_peer(peer)
        if peer.outbound:
            self._backoff(peer.address)
        self._log("peer_closed", peer=peer.node_id, address=peer.address, reason=reason.name.lower(), text=text)

    def _ready_peers(self) -> list[Peer]:
        return [self.peers[c] for c in sorted(self.peers) if self.peers[c].ready]

    def _ready_peer_ids(self) -> list[str]:
        """Node ids of the peers past the handshake, sorted (what gossip draws targets from)."""
        return sorted([p.node_id for p in self.peers.values() if p.conn.state is ConnState.READY and p.node_id])

    def _dial_more(self) -> None:
        outbound = sum(1 for p in self.peers.values() if p.outbound) + len(self.dialing)
        if outbound >= self.p2p.peers_outbound_target:
            return
        connected = {p.address for p in self.peers.values()} | {p.listen_address for p in self.peers.values()}
        for address in sorted(self.addresses):
            if outbound >= self.p2p.peers_outbound_target:
                break
            info = self.addresses[address]
            if (
                info.self_address or address in connected or address in self.dialing
                or info.next_dial_ms > self.now_ms or address == self.config.listen_address
                or self.scores.is_banned(address, self.now_ms)
            ):
                continue
            self.dialing.add(address)
            self._dials.append(address)
            # Until the dial reports back, do not dial it again.
            info.next_dial_ms = self.now_ms + self.p2p.handshake_timeout_ms
            outbound += 1

    def add_peer_address(self, address: str, persistent: bool = False) -> bool:
        if address in self.addresses:
            self.addresses[address].persistent |= persistent
            return False
        if len(self.addresses) >= self.p2p.address_book_entries_max:
            removable = sorted(a for a, i in self.addresses.items() if not i.persistent)
            if not removable:
                return False
            worst = max(removable, key=lambda a: (self.addresses[a].failures, a))
            del self.addresses[worst]
        self.addresses[address] = AddressInfo(persistent=persistent)
        self._persist_peers.append(address)
        return True

    # === bytes and messages ==================================================================

    def _on_bytes(self, conn_id: int, data: bytes) -> None:
        peer = self.peers.get(conn_id)
        if peer is None:
            return  # closed by us; late bytes are dropped
        peer.last_received_ms = self.now_ms
        for event in peer.conn.receive_data(data):
            if conn_id not in self.peers:
                break
            if isinstance(event, HandshakeCompleted):
                self._on_handshake(peer, event)
            elif isinstance(event, MessageReceived):
                self._on_message(peer, event.message)
            elif isinstance(event, ConnectionClosed):
                self._on_conn_closed(peer, event)

    def _on_conn_closed(self, peer: Peer, event: ConnectionClosed) -> None:
        self.peers.pop(peer.conn_id, None)
        self._closing[peer.conn_id] = peer.conn
        self._closes.append(peer.conn_id)
        self._forget_peer(peer)
        reason = Reason.describe(event.reason)
        if event.by_peer:
            self._log("peer_said_goodbye", peer=peer.node_id, address=peer.address, reason=reason, text=event.text)
            if peer.outbound:
                self._backoff(peer.address)
            return
        # We closed it because of a protocol error: that is misbehaviour, or a peer of another network.
        self._log("peer_refused" if isinstance(event.error, HandshakeFailed) else "peer_protocol_error",
                  peer=peer.node_id, address=peer.address, reason=reason, text=event.text)
        if event.reason == Reason.SELF_CONNECTION:
            if peer.address in self.addresses:
                self.addresses[peer.address].self_address = True
            return
        key = peer.node_id or peer.address
        self.scores.ban(key, self.now_ms, f"{reason}: {event.text}")
        if peer.outbound:
            self.scores.ban(peer.address, self.now_ms, f"{reason}: {event.text}")
            self._backoff(peer.address)

    def _on_handshake(self, peer: Peer, event: HandshakeCompleted) -> None:
        peer.node_id = event.node_id
        peer.listen_address = event.listen_address
        peer.head = event.head
        peer.next_ping_ms = self.now_ms + self.p2p.ping_interval_ms
        if self.scores.is_banned(event.node_id, self.now_ms):
            self._disconnect(peer, Reason.BANNED, "node is banned")
            return
        existing_id = self.by_node_id.get(event.node_id)
        if existing_id is not None:
            # One connection per node. Both ends keep the connection dialled by the
            # node with the lower id, so simultaneous dials settle on the same one.
            existing = self.peers[existing_id]
            keep_new = self._dialer_id(peer) < self._dialer_id(existing)
            loser = existing if keep_new else peer
            self._disconnect(loser, Reason.DUPLICATE_CONNECTION, "already connected")
            if not keep_new:
                return
        self.by_node_id[event.node_id] = peer.conn_id
        if peer.outbound:
            info = self.addresses.get(peer.address)
            if info is not None:
                info.failures = 0
        if event.listen_address:
            self.add_peer_address(event.listen_address)
        self._log("peer_connected", peer=event.node_id, address=peer.address, outbound=peer.outbound,
                  peer_height=event.head.height)
        peer.conn.send(GetPeers())
        # Hand a new peer our pending transactions: ones that arrived while we had no
        # peers (just started, or cut off) would otherwise never leave this node.
        for tx in self.mempool.select(self.tree.head_state(), self.p2p.mempool_announce_max):
            peer.conn.send(Gossip(Topic.TRANSACTIONS, tx.encode()))
        self._maybe_sync(peer)

    def _dialer_id(self, peer: Peer) -> str:
        assert peer.node_id is not None
        return self.node_id if peer.outbound else peer.node_id

    def _on_message(self, peer: Peer, msg: Any) -> None:
        if isinstance(msg, Gossip):
            self._on_gossip(peer, msg)
        elif isinstance(msg, GossipBatch):
            for payload in msg.payloads:
                if peer.conn_id not in self.peers:
                    break  # a bad payload got the peer disconnected
                self._on_gossip(peer, Gossip(msg.topic, payload))
        elif isinstance(msg, Status):
            peer.head = msg.head
            self._maybe_sync(peer)
        elif isinstance(msg, Ping):
            peer.conn.send(Pong(msg.nonce))
        elif isinstance(msg, Pong):
            peer.ping_nonce = None
        elif isinstance(msg, GetBlocksByRange):
            self._serve_range(peer, msg)
        elif isinstance(msg, GetBlocksByHash):
            self._serve_hashes(peer, msg)
        elif isinstance(msg, Blocks):
            self._on_blocks(peer, msg)
        elif isinstance(msg, GetPeers):
            addresses = sorted({p.listen_address for p in self._ready_peers() if p.listen_address and p is not peer})
            peer.conn.send(Peers(tuple(addresses[: self.p2p.peer_exchange_addresses_max])))
        elif isinstance(msg, Peers):
            if len(msg.addresses) > self.p2p.peer_exchange_addresses_max:
                self._penalise(peer, Offence.OVERSIZED_RESPONSE, "too many peer addresses")
                return
            for address in msg.addresses:
                if address and address != self.config.listen_address:
                    self.add_peer_address(address)
        else:
            raise AssertionError(f"connection delivered {msg!r} after the handshake")

    def _penalise(self, peer: Peer, offence: Offence, reason: str) -> None:
        key = peer.node_id or peer.address
        self._log("peer_penalised", peer=key, offence=offence.name.lower(), reason=reason)
        if self.scores.penalise(key, offence, self.now_ms, reason):
            self._disconnect(peer, Reason.MISBEHAVIOUR, reason)

    def _penalise_node(self, node_id: str, offence: Offence, reason: str) -> None:
        conn_id = self.by_node_id.get(node_id)
        if conn_id is not None and conn_id in self.peers:
            self._penalise(self.peers[conn_id], offence, reason)
        else:
            self.scores.penalise(node_id, offence, self.now_ms, reason)

    # === gossip =================================================================================

    def _on_gossip(self, peer: Peer, msg: Gossip) -> None:
        if msg.topic not in (Topic.TRANSACTIONS, Topic.BLOCKS, Topic.VOTES, Topic.EVIDENCE):
            return  # topics nobody here speaks: ignored, not an offence
        msg_id = self.router.on_receive(msg.topic, msg.payload, self.now_ms)
        if msg_id is None:
            held = self._held_out.get(msg.topic)
            if held is not None:
                # The sender has this message: it will not be sent back to them.
                have = held.get(msg.payload)
                if have is not None:
                    have.add(peer.node_id)
            return  # a duplicate, counted by the router
        if msg.topic == Topic.TRANSACTIONS:
            verdict = self._on_gossip_transaction(peer, msg.payload)
        elif msg.topic == Topic.BLOCKS:
            verdict = self._on_gossip_block(peer, msg.payload)
        elif msg.topic == Topic.VOTES:
            verdict = self._on_gossip_vote(peer, msg.payload)
        else:
            verdict = self._on_gossip_evidence(peer, msg.payload)
        if verdict is Verdict.ACCEPT:
            self._forward(msg.topic, msg.payload, exclude=peer.node_id,
                          block_hash=peer.known_block if msg.topic == Topic.BLOCKS else None)

    def _forward(self, topic: int, payload: bytes, exclude: str | None, block_hash: bytes | None = None) -> None:
        """Queue a gossip message for up to `fanout` peers; `ready()` sends what is queued
        for each peer as one Gossip or GossipBatch per topic, in order. A block's hash is
        noted as known to the peers it goes to (they need no Status about it)."""
        held = self._held_out.get(topic)
        if held is not None:
            # Targets are drawn when the batch goes out, once for all its messages.
            held.setdefault(payload, set()).update([exclude] if exclude is not None else [])
            if self._held_flush_at_ms[topic] <= self.now_ms:
                self._held_flush_at_ms[topic] = self.now_ms + (
                    self.config.vote_batch_ms if topic == Topic.VOTES else self.config.tx_batch_ms)
            return
        for node_id in self.router.choose_targets(self._ready_peer_ids(), exclude):
            self._gossip_out.setdefault((node_id, topic), []).append(payload)
            if block_hash is not None:
                self.peers[self.by_node_id[node_id]].known_block = block_hash

    def _flush_gossip(self) -> None:
        # Votes and transactions wait (vote_batch_ms, tx_batch_ms) so that a slot's votes, which
        # all arrive within moments, travel on as one batch to each of `fanout` peers
        # drawn for the batch, less what a peer sent us itself (its duplicates meanwhile
        # say it has them). Blocks go at once: they are what propagation time is about.
        out = self._gossip_out
        held_out = self._held_out
        due = [topic for topic, held in held_out.items() if held and self.now_ms >= self._held_flush_at_ms[topic]] \
            if held_out[Topic.VOTES] or held_out[Topic.TRANSACTIONS] else ()
        if due:
            ready = self._ready_peer_ids()
            for topic in due:
                held = self._held_out[topic]
                for node_id in self.router.choose_targets(ready, None):
                    payloads = [payload for payload, have in held.items() if node_id not in have]
                    if payloads:
                        out[(node_id, topic)] = payloads
                held.clear()
        if not out:
            return
        self._gossip_out = {}
        # Per peer, blocks before anything else: they are what propagation time is about.
        for (node_id, topic), payloads in sorted(out.items(),
                                                 key=lambda kv: (kv[0][0], kv[0][1] != Topic.BLOCKS, kv[0][1])):
            conn_id = self.by_node_id.get(node_id)
            peer = self.peers.get(conn_id) if conn_id is not None else None
            if peer is None or not peer.ready:
                continue
            if len(payloads) == 1:
                peer.conn.send(Gossip(topic, payloads[0]))
                continue
            batch: list[bytes] = []
            size = 0
            for payload in payloads:
                if batch and (len(batch) >= GOSSIP_BATCH_ITEMS_MAX or size + len(payload) > GOSSIP_BATCH_BYTES_MAX):
                    peer.conn.send(GossipBatch(topic, tuple(batch)))
                    batch, size = [], 0
                batch.append(payload)
                size += len(payload)
            peer.conn.send(GossipBatch(topic, tuple(batch)) if len(batch) > 1 else Gossip(topic, batch[0]))

    def _publish(self, topic: int, payload: bytes, block_hash: bytes | None = None) -> None:
        self.router.publish(topic, payload, self.now_ms)
        self._forward(topic, payload, exclude=None, block_hash=block_hash)

    def _on_gossip_transaction(self, peer: Peer, payload: bytes) -> Verdict:
        try:
            tx = decode_transaction(payload)
        except DecodeError as exc:
            self._penalise(peer, Offence.MALFORMED_MESSAGE, f"malformed transaction: {exc}")
            return Verdict.REJECT
        try:
            self.mempool.add(tx, self.tree.head_state(), self.genesis.chain_id, self.tree.params,
                             verified=self.tree.verified)
        except (InvalidSignature, WrongChain) as exc:
            self._penalise(peer, Offence.INVALID_SIGNATURE, f"invalid transaction: {exc}")
            return Verdict.REJECT
        except (InvalidTransaction, MempoolRejected):
            return Verdict.IGNORE  # stale, already known, or a race: no blame
        self._mempool_dirty = True
        return Verdict.ACCEPT

    def _on_gossip_vote(self, peer: Peer, payload: bytes) -> Verdict:
        outcome = self._on_vote_payload(payload)
        if outcome is False:
            self._penalise(peer, Offence.INVALID_SIGNATURE, "invalid vote")
            return Verdict.REJECT
        if outcome is None:
            return Verdict.IGNORE
        self._votes_arrived = True  # the head is reconsidered once, at the end of the step
        return Verdict.ACCEPT

    def _on_gossip_evidence(self, peer: Peer, payload: bytes) -> Verdict:
        outcome = self.engine.on_evidence(self.tree, payload)
        if outcome is False:
            self._penalise(peer, Offence.INVALID_SIGNATURE, "invalid slashing evidence")
            return Verdict.REJECT
        if outcome is None:
            return Verdict.IGNORE
        self.evidence_accepted += 1
        self._votes_arrived = True  # an equivocator's weight left the fork choice: reconsider the head
        return Verdict.ACCEPT

    def _on_gossip_block(self, peer: Peer, payload: bytes) -> Verdict:
        try:
            block = decode_block(payload)
        except DecodeError as exc:
            self._penalise(peer, Offence.MALFORMED_MESSAGE, f"malformed block: {exc}")
            return Verdict.REJECT
        peer.known_block = block.hash  # the sender has it
        # The sender has at least this block; a better head summary comes with Status.
        return self._import_block(block, peer)

    # === blocks ====================================================================================

    def _import_block(self, block: Block, peer: Peer | None) -> Verdict:
        """Validate and add a block, then the orphans waiting for it. The one way in."""
        verdict = self._add_one(block, peer, keep_orphan=True)
        if verdict is not Verdict.ACCEPT:
            return verdict
        # Orphans waiting for this block (and their children) can go in now.
        waiting = [block.hash]
        while waiting:
            for orphan in self.orphans.take_children(waiting.pop()):
                sender = self.peers.get(self.by_node_id.get(orphan.peer, -1)) if orphan.peer else None
                if self._add_one(orphan.block, sender, keep_orphan=False) is Verdict.ACCEPT:
                    waiting.append(orphan.block.hash)
        return Verdict.ACCEPT

    def _add_one(self, block: Block, peer: Peer | None, *, keep_orphan: bool) -> Verdict:
        """Add one block to the tree and turn the outcome into a gossip verdict."""
        try:
            added = self.tree.add_block(block, self.now_ms)
        except DuplicateBlock:
            return Verdict.IGNORE
        except UnknownParent:
            if keep_orphan and self.orphans.add(block, peer.node_id if peer else None, self.now_ms) and peer is not None:
                self._request_ancestors(peer, block)
            return Verdict.IGNORE
        except (FutureBlock, ReorgTooDeep) as exc:
            self._log("block_ignored", height=block.header.height, hash=block.hash.hex(), reason=str(exc))
            return Verdict.IGNORE
        except ValidationError as exc:
            self.invalid_blocks_seen += 1
            self._log("block_rejected", height=block.header.height, hash=block.hash.hex(), reason=str(exc),
                      peer=peer.node_id if peer else None)
            if peer is not None:
                self._penalise(peer, Offence.INVALID_BLOCK, f"invalid block: {exc}")
            return Verdict.REJECT
        self._on_block_added(added)
        return Verdict.ACCEPT

    def _on_block_added(self, added: Added) -> None:
        self._persist_blocks.append(added.entry.block)
        if added.head_changed:
            self._on_head_moved(added)
        if self.selfish is not None and added.entry.hash != self._own_block:
            # A block from outside: the public chain may have caught up with what we withhold.
            self._publish_blocks(self.selfish.on_public(added.entry, self.tree), "public chain caught up")

    def _on_head_moved(self, added: Added) -> None:
        self._note_reorg(added)
        readmitted = self.mempool.on_head_changed(added, self.tree.head_state(), self.genesis.chain_id, self.tree.params)
        for tx in readmitted:
            self._forward(Topic.TRANSACTIONS, tx.encode(), exclude=None)
        self._work_dirty = True
        head = self.tree.head
        self._log("new_head", height=head.height, hash=head.hash.hex(),
                  transactions=len(head.block.transactions), block_timestamp_ms=head.header.timestamp_ms)
        if added.reorg_depth:
            self._log("reorg", depth=added.reorg_depth, old_head=added.reverted[0].hash.hex(),
                      new_head=self.tree.head.hash.hex(), height=self.tree.head.height)

    def _note_reorg(self, added: Added) -> None:
        if added.reorg_depth:
            self.reorgs += 1
            self.deepest_reorg = max(self.deepest_reorg, added.reorg_depth)

    # === sync ======================================================================================

    def head_summary(self) -> HeadSummary:
        # A selfish miner announces the top of its public chain, never a withheld block.
        head = self.tree.head if self.selfish is None else self.selfish.public_head(self.tree)
        return HeadSummary(head.height, head.hash, head.score)

    def _next_request_id(self) -> int:
        self._request_seq += 1
        return self._request_seq

    def _send_request(self, peer: Peer, msg: Any, kind: str, count: int) -> None:
        assert peer.node_id is not None
        self.requests[msg.request_id] = PendingRequest(msg.request_id, peer.node_id, kind, count,
                                                       self.now_ms + self.p2p.request_timeout_ms)
        peer.requests += 1
        peer.conn.send(msg)

    def _finish_request(self, request_id: int) -> PendingRequest | None:
        request = self.requests.pop(request_id, None)
        if request is not None:
            conn_id = self.by_node_id.get(request.peer)
            if conn_id is not None and conn_id in self.peers:
                self.peers[conn_id].requests -= 1
        return request

    def _sync_from_peers(self) -> None:
        for peer in self._ready_peers():
            self._maybe_sync(peer)

    def _maybe_sync(self, peer: Peer) -> None:
        """Ask a peer with a better head for the next batch of blocks."""
        head = peer.head
        if head is None or not peer.ready or peer.requests >= self.p2p.sync_requests_per_peer_max:
            return
        ours = self.tree.head
        if head.score <= ours.score or head.hash in self.tree.entries or head.hash in self.orphans:
            return
        # One range request per gap at a time: do not ask two peers for the same heights.
        if any(r.kind == "range" for r in self.requests.values()):
            return
        start = max(1, min(ours.height + 1, head.height))
        count = min(self.p2p.sync_batch_blocks_max, head.height - start + 1)
        self._send_request(peer, GetBlocksByRange(self._next_request_id(), start, count), "range", count)

    def _request_ancestors(self, peer: Peer, block: Block) -> None:
        """Fetch the blocks just below an orphan's root from the peer that sent it."""
        root = self.orphans.root_of(block.hash).block
        if self.ancestor_requests.get(root.hash, 0) > self.now_ms or peer.requests >= self.p2p.sync_requests_per_peer_max:
            return
        self.ancestor_requests[root.hash] = self.now_ms + self.p2p.request_timeout_ms
        if len(self.ancestor_requests) > self.p2p.orphan_blocks_max:
            for key in sorted(self.ancestor_requests, key=lambda k: (self.ancestor_requests[k], k))[: len(self.ancestor_requests) // 2]:
                del self.ancestor_requests[key]
        top = root.header.height - 1
        start = max(self.tree.final_height + 1, top - self.p2p.sync_batch_blocks_max + 1, 1)
        if top < start:
            return
        count = top - start + 1
        self._send_request(peer, GetBlocksByRange(self._next_request_id(), start, count), "range", count)

    def _serve_range(self, peer: Peer, msg: GetBlocksByRange) -> None:
        count = min(msg.count, self.p2p.sync_batch_blocks_max)
        top = self.head_summary().height  # withheld blocks (byzantine "withhold") are not served
        blocks = [self.tree.canonical[h].block for h in range(msg.start_height, min(msg.start_height + count, top + 1))]
        peer.conn.send(Blocks(msg.request_id, self._fit_frame(blocks)))

    def _serve_hashes(self, peer: Peer, msg: GetBlocksByHash) -> None:
        if len(msg.hashes) > self.p2p.request_hashes_max:
            self._penalise(peer, Offence.OVERSIZED_RESPONSE, f"asked for {len(msg.hashes)} hashes")
            return
        blocks = [e.block for e in (self.tree.get(h) for h in msg.hashes)
                  if e is not None and not (self.selfish is not None and self.selfish.is_private(e.hash))]
        peer.conn.send(Blocks(msg.request_id, self._fit_frame(blocks)))

    def _fit_frame(self, blocks: list[Block]) -> tuple[bytes, ...]:
        """Encoded blocks, as many as fit one frame (leaving room for the envelope)."""
        budget = self.p2p.frame_bytes_max - 1024
        out: list[bytes] = []
        for block in blocks:
            encoded = block.encode()
            if len(encoded) + 8 > budget:
                break
            budget -= len(encoded) + 8
            out.append(encoded)
        return tuple(out)

    def _on_blocks(self, peer: Peer, msg: Blocks) -> None:
        request = self.requests.get(msg.request_id)
        if request is None or request.peer != peer.node_id:
            self._penalise(peer, Offence.UNSOLICITED_RESPONSE, f"unsolicited blocks response {msg.request_id}")
            return
        self._finish_request(msg.request_id)
        if len(msg.blocks) > request.count:
            self._penalise(peer, Offence.OVERSIZED_RESPONSE, f"{len(msg.blocks)} blocks for a request of {request.count}")
            return
        for encoded in msg.blocks:
            try:
                block = decode_block(encoded)
            except DecodeError as exc:
                self._penalise(peer, Offence.MALFORMED_MESSAGE, f"malformed block in response: {exc}")
                return
            if self._import_block(block, peer) is Verdict.REJECT or peer.conn_id not in self.peers:
                return
        self._maybe_sync(peer)

    # === mining ======================================================================================

    def _maybe_refresh_work(self) -> None:
        wants = self.engine.minable and (self.mining_enabled or bool(self.generate_pending))
        if not wants:
            if self.work is not None:
                self.work = None
                self._templates.clear()
                self._open_template = None
                self._mining_changed = True
            return
        stale_mempool = self._mempool_dirty and self.now_ms - self._work_made_ms >= self.config.mining_refresh_ms
        on_demand = bool(self.generate_pending)
        if self.work is not None and not self._work_dirty and not stale_mempool and self.work.on_demand == on_demand:
            return
        open_template = self._open_template
        if self._work_dirty or open_template is None or open_template.parent is not self.tree.head:
            # A new head (or a refused block): start over on the head.
            open_template = self._open_template = self.tree.start_template()
        # Otherwise only the mempool changed: extend the open template with what applies
        # after it (selecting against its state skips what it already holds).
        room = self.config.block_transactions_max - len(open_template.chosen)
        if room > 0:
            self.tree.fill_template(open_template, self.mempool.select(open_template.state, room),
                                    self.config.block_transactions_max)
        template = self.tree.seal_template(open_template, self.producer, self.now_ms)
        self._work_seq += 1
        self._templates[self._work_seq] = template
        for old in [w for w in self._templates if w < self._work_seq - 3]:
            del self._templates[old]
        self.work = MiningWork(self._work_seq, header_prefix(template.header), compact_to_target(template.header.bits),
                               template.header.height, on_demand)
        self._mining_changed = True
        self._work_dirty = False
        self._mempool_dirty = False
        self._work_made_ms = self.now_ms

    def _on_miner_report(self, report: MinerReport) -> None:
        self.hashes_tried += report.hashes
        if report.nonce is None:
            return
        template = self._templates.pop(report.work_id, None)
        if template is None:
            return  # work we already replaced
        block = template._replace(header=with_nonce(template.header, report.nonce))
        self._own_block = block.hash
        try:
            verdict = self._import_block(block, None)
        finally:
            self._own_block = None
        if verdict is not Verdict.ACCEPT:
            self._log("mined_block_refused", height=block.header.height, hash=block.hash.hex(), verdict=verdict.value)
            self._work_dirty = True
            return
        self.blocks_mined += 1
        self._log("block_mined", height=block.header.height, hash=block.hash.hex(), transactions=len(block.transactions))
        if self.selfish is not None and self.mining_enabled:
            # Byzantine switch "withhold": the strategy decides what goes out, maybe nothing.
            entry = self.tree.get(block.hash)
            assert entry is not None
            self._publish_blocks(self.selfish.on_mined(entry, self.tree), "selfish mining")
        else:
            self._publish(Topic.BLOCKS, block.encode(), block_hash=block.hash)
        if self.generate_pending:
            pending = self.generate_pending[0]
            pending[1] -= 1
            pending[2].append(block.hash.hex())
            if pending[1] == 0:
                self.generate_pending.pop(0)
                self._replies.append(RpcReply(pending[0], pending[2], None))

    # === RPC ==========================================================================================

    def _on_rpc(self, call: RpcCalled) -> None:
        from node.rpc_methods import dispatch

        try:
            result = dispatch(self, call)
        except RpcError as exc:
            self._replies.append(RpcReply(call.request_id, None, (exc.code, exc.message)))
            return
        if result is not DEFERRED:
            self._replies.append(RpcReply(call.request_id, result, None))

    def submit_transaction(self, tx: Transaction) -> bytes:
        """Admit a transaction from a client and gossip it. Raises on refusal."""
        txid = self.mempool.add(tx, self.tree.head_state(), self.genesis.chain_id, self.tree.params,
                             verified=self.tree.verified)
        self._persist_transactions.append(tx)  # persisted before the reply goes out
        self._mempool_dirty = True
        self._publish(Topic.TRANSACTIONS, tx.encode())
        return txid

    def remove_peer(self, node_id: str) -> bool:
        conn_id = self.by_node_id.get(node_id)
        if conn_id is None or conn_id not in self.peers:
            return False
        peer = self.peers[conn_id]
        if peer.outbound and peer.address in self.addresses:
            self.addresses[peer.address].persistent = False
            del self.addresses[peer.address]
        self._disconnect(peer, Reason.REMOVED, "removed by the operator")
        return True

    # === logs =========================================================================================

    def _log(self, event: str, **fields: Any) -> None:
        fields["event"] = event
        self._logs.append(fields)
