"""NodeCore over the wire protocol, several nodes in one process (DESIGN.md sections 2 and 4).

What: NodeCores that are wired together complete the handshake and know each other
by node id; a block mined on one node reaches the others (directly and relayed);
a transaction sent over RPC reaches a peer's mempool and is mined; a connection that
sends garbage, an oversized frame length or a Hello for another genesis is closed
(its id in ready().closes, a Goodbye with the reason sent on it, the sender banned)
while the node keeps working with its good peers; step() never raises on hostile
input; RPC errors use the JSON-RPC codes.

How: `Net` is a tiny shell in the raft `network` style. It owns the cores, gives each
connection an id at both ends, and after every input drains `ready()` -> `advance()`,
moving `sends` to the other end as BytesReceived and turning `closes` into
PeerDisconnected there, until every node is quiet. Time only moves by explicit Tick.
Mining uses easy bits and NodeCore(skip_pow_check_for_simulation=True): a
MinerReport(work_id, 0, 1) for ready().mining stands for a found nonce. Hostile peers
are raw byte streams, or a p2p Connection driven by the test.
"""

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consensus.crypto import KeyPair, sha256
from consensus.presets import account_key, make_genesis
from consensus.types import TX_TRANSFER, Transaction
from node.core import (
    INVALID_PARAMS,
    METHOD_NOT_FOUND,
    TX_REJECTED,
    BytesReceived,
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
from p2p.config import P2PConfig
from p2p.connection import Connection, LocalIdentity, State, node_id_of
from p2p.errors import Reason
from p2p.framing import FrameDecoder, encode_frame
from p2p.messages import (
    Blocks,
    GetBlocksByHash,
    GetBlocksByRange,
    GetPeers,
    Goodbye,
    Gossip,
    GossipBatch,
    HeadSummary,
    Message,
    Peers,
    Ping,
    Pong,
    Status,
    Topic,
    decode_message,
    encode_message,
)

SEED = "core-protocol-test"
EASY_BITS = 0x1F00FFFF
GENESIS = make_genesis(seed=SEED, accounts=4, balance=1_000_000,
                       overrides={"genesis_bits": EASY_BITS, "limit_bits": EASY_BITS})
OTHER_GENESIS = make_genesis(seed=SEED, accounts=4, balance=1_000_001,
                             overrides={"genesis_bits": EASY_BITS, "limit_bits": EASY_BITS})
START_MS = GENESIS.timestamp_ms + 60_000
FRAME_MAX = P2PConfig().frame_bytes_max


def node_key(i: int) -> KeyPair:
    return KeyPair.derive(SEED, "node", i)


def address(i: int) -> str:
    return f"10.0.0.{i}:9000"


def signed_transfer(sender: int, nonce: int, *, amount: int = 1_000, fee: int = 10, recipient: bytes | None = None,
                    chain_id: str = GENESIS.chain_id) -> Transaction:
    k = account_key(SEED, sender)
    recipient = recipient or account_key(SEED, (sender + 1) % 4).address
    unsigned = Transaction(TX_TRANSFER, chain_id, k.public_key, recipient, amount, fee, nonce, bytes(64))
    return unsigned._replace(signature=k.sign(unsigned.signing_bytes()))


def decode_frames(data: bytes) -> list[Message]:
    return [decode_message(f) for f in FrameDecoder(FRAME_MAX).feed(data)]


class Net:
    """NodeCores wired by hand; conn ids are unique per net, so one id names both ends' view."""

    def __init__(self, count: int, genesis=GENESIS):
        self.nodes = [
            NodeCore(genesis, node_key(i), NodeConfig(listen_address=address(i)), random.Random(i), START_MS,
                     skip_pow_check_for_simulation=True)
            for i in range(count)
        ]
        self.links: dict[tuple[int, int], tuple[int, int] | None] = {}  # (node, conn) -> (node, conn), None: raw
        self.raw_received: dict[tuple[int, int], bytearray] = {}  # what nodes sent to raw test peers
        self.closed: list[tuple[int, int]] = []  # (node, conn) in ready().closes, in order
        self.replies: list[list[RpcReply]] = [[] for _ in range(count)]
        self.mining = [None] * count
        self._next_conn = 100
        self._rpc_id = 0
        self._pending: list[tuple[int, Ready]] = []  # Readies taken but not yet applied

    # --- wiring -------------------------------------------------------------------------

    def _conn_id(self) -> int:
        self._next_conn += 1
        return self._next_conn

    def connect(self, i: int, j: int) -> tuple[int, int]:
        """Node i dials node j; returns (i's conn id, j's conn id)."""
        ci, cj = self._conn_id(), self._conn_id()
        self.links[(i, ci)] = (j, cj)
        self.links[(j, cj)] = (i, ci)
        self.step(j, PeerConnected(cj, False, f"10.9.{i}.1:5000{i}"))
        self.step(i, PeerConnected(ci, True, address(j)))
        self.run()
        return ci, cj

    def attach_raw(self, i: int, remote: str = "10.66.66.66:4444") -> int:
        """An inbound connection to node i whose far end is the test itself."""
        c = self._conn_id()
        self.links[(i, c)] = None
        self.raw_received[(i, c)] = bytearray()
        self.step(i, PeerConnected(c, False, remote))
        self.run()
        return c

    def raw_messages(self, i: int, c: int) -> list[Message]:
        data = bytes(self.raw_received[(i, c)])
        self.raw_received[(i, c)].clear()
        return decode_frames(data)

    # --- driving --------------------------------------------------------------------------

    def step(self, i: int, event) -> None:
        self.nodes[i].step(event)
        self.pump(i)

    def pump(self, i: int) -> Ready:
        """Take node i's effects and apply them, as the runtime would (persist, send, close)."""
        node = self.nodes[i]
        ready = node.ready()
        node.advance(ready)
        self._pending.append((i, ready))
        return ready

    def run(self, rounds_max: int = 200) -> None:
        """Apply effects and deliver bytes until every node is quiet."""
        for _ in range(rounds_max):
            if not self._pending:
                for i in range(len(self.nodes)):
                    self.pump(i)
                if all(r.empty() for _, r in self._pending):
                    self._pending = []
                    return
            batch, self._pending = self._pending, []
            for i, ready in batch:
                self._apply(i, ready)
        raise AssertionError("the network did not settle")

    def _apply(self, i: int, ready: Ready) -> None:
        self.replies[i].extend(ready.replies)
        if ready.mining_changed:
            self.mining[i] = ready.mining
        for conn_id, data in ready.sends:
            far = self.links.get((i, conn_id), "gone")
            if far == "gone":
                continue
            if far is None:
                self.raw_received[(i, conn_id)] += data
                continue
            j, cj = far
            self.nodes[j].step(BytesReceived(cj, data))
            self.pump(j)
        for conn_id in ready.closes:
            self.closed.append((i, conn_id))
            far = self.links.pop((i, conn_id), "gone")
            if far not in ("gone", None):
                j, cj = far
                self.links.pop((j, cj), None)
                self.nodes[j].step(PeerDisconnected(cj, "closed by the other end"))
                self.pump(j)

    def tick(self, now_ms: int) -> None:
        for i in range(len(self.nodes)):
            self.step(i, Tick(now_ms))
        self.run()

    def relay_held(self) -> None:
        """Let the transactions and votes each node holds for relaying go out (they wait
        up to tx_batch_ms / vote_batch_ms to travel in batches)."""
        config = self.nodes[0].config
        self.tick(max(n.now_ms for n in self.nodes) + max(config.tx_batch_ms, config.vote_batch_ms))

    def rpc(self, i: int, method: str, params=None) -> RpcReply:
        self._rpc_id += 1
        rid = self._rpc_id
        self.step(i, RpcCalled(rid, method, params))
        self.run()
        replies = [r for r in self.replies[i] if r.request_id == rid]
        assert len(replies) == 1, f"{method}: {len(replies)} replies"
        return replies[0]

    def mine(self, i: int) -> str:
        """Node i mines one block (the nonce is 'found' at once); returns its hash."""
        self._rpc_id += 1
        rid = self._rpc_id
        self.step(i, RpcCalled(rid, "miner_generate", [1]))
        self.run()
        work = self.mining[i]
        assert work is not None, "miner_generate gave no work"
        self.step(i, MinerReport(work.work_id, 0, 1))
        self.run()
        (reply,) = [r for r in self.replies[i] if r.request_id == rid]
        assert reply.error is None, reply
        (block_hash,) = reply.result
        return block_hash

    # --- views --------------------------------------------------------------------------------

    def height(self, i: int) -> int:
        return self.nodes[i].tree.head.height

    def head(self, i: int) -> str:
        return self.nodes[i].tree.head.hash.hex()

    def ready_peer_ids(self, i: int) -> list[str]:
        return sorted(p.node_id for p in self.nodes[i].peers.values() if p.ready)


def net_of(count: int) -> Net:
    return Net(count)


def line(count: int) -> Net:
    """0 - 1 - 2 ...: each node dials the next."""
    net = net_of(count)
    for i in range(count - 1):
        net.connect(i, i + 1)
    return net


# --- handshake and blocks -------------------------------------------------------------------


def test_two_nodes_handshake_and_know_each_others_ids():
    net = line(2)
    id0, id1 = node_id_of(node_key(0).public_key), node_id_of(node_key(1).public_key)
    assert net.ready_peer_ids(0) == [id1]
    assert net.ready_peer_ids(1) == [id0]
    assert net.nodes[0].by_node_id.keys() == {id1}
    peers = net.rpc(0, "net_peers").result
    assert [(p["node_id"], p["state"], p["outbound"], p["listen_address"]) for p in peers] == [
        (id1, "ready", True, address(1))
    ]
    info = net.rpc(1, "net_info").result
    assert info["node_id"] == id1 and info["peers"] == 1 and info["inbound"] == 1


def test_a_mined_block_reaches_the_peer():
    net = line(2)
    block_hash = net.mine(0)
    assert net.height(0) == 1 and net.head(0) == block_hash
    assert net.height(1) == 1 and net.head(1) == block_hash
    assert net.nodes[0].blocks_mined == 1 and net.nodes[1].blocks_mined == 0


def test_blocks_are_relayed_along_a_line_and_both_ways():
    net = line(3)
    first = net.mine(0)
    assert [net.head(i) for i in range(3)] == [first] * 3
    second = net.mine(2)
    assert [net.height(i) for i in range(3)] == [2, 2, 2]
    assert [net.head(i) for i in range(3)] == [second] * 3
    # Node 1 heard each block first from one side and forwarded it to the other only.
    assert net.nodes[1].router.messages_first == 2


def test_a_node_that_connects_later_syncs_the_chain():
    net = net_of(2)
    for _ in range(3):
        net.mine(0)
    assert net.height(1) == 0
    net.connect(1, 0)
    assert net.height(1) == 3 and net.head(1) == net.head(0)


def test_a_sent_transaction_reaches_the_peer_and_is_mined_there():
    net = line(2)
    transfer = signed_transfer(0, 0)
    reply = net.rpc(0, "tx_send", [transfer.encode().hex()])
    assert reply == RpcReply(reply.request_id, transfer.txid.hex(), None)
    assert transfer.txid not in net.nodes[1].mempool  # held tx_batch_ms to go out in a batch
    net.relay_held()
    assert transfer.txid in net.nodes[1].mempool  # gossiped
    block_hash = net.mine(1)
    assert net.head(0) == block_hash
    assert len(net.nodes[0].mempool) == 0 and len(net.nodes[1].mempool) == 0
    status = net.rpc(0, "chain_getTransaction", [transfer.txid.hex()]).result
    assert status["status"] == "included" and status["height"] == 1 and status["block"] == block_hash


# --- hostile connections ---------------------------------------------------------------------------


def assert_refused(net: Net, i: int, c: int, reason: Reason) -> None:
    assert (i, c) in net.closed
    assert c not in net.nodes[i].peers
    messages = net.raw_messages(i, c)
    assert messages and isinstance(messages[-1], Goodbye), messages
    assert messages[-1].reason == int(reason), Reason.describe(messages[-1].reason)


def hostile_then_good_block(payload_for_hostile, reason: Reason) -> Net:
    """Node 1 has a good peer (node 0) and a hostile raw connection; returns after checks."""
    net = line(2)
    c = net.attach_raw(1)
    assert [type(m).__name__ for m in net.raw_messages(1, c)] == ["Hello"]
    net.step(1, BytesReceived(c, payload_for_hostile(net, c)))
    net.run()
    assert_refused(net, 1, c, reason)
    assert net.nodes[1].scores.is_banned("10.66.66.66:4444", net.nodes[1].now_ms)
    # Late bytes on the closed connection are dropped quietly.
    net.step(1, BytesReceived(c, b"\xff" * 64))
    net.run()
    assert net.raw_messages(1, c) == []
    # The node keeps working with its good peer.
    assert net.ready_peer_ids(1) == [node_id_of(node_key(0).public_key)]
    block_hash = net.mine(0)
    assert net.head(1) == block_hash and net.height(1) == 1
    return net


def test_garbage_bytes_close_that_connection_only():
    hostile_then_good_block(lambda net, c: encode_frame(b"\xc1\xc1garbage", FRAME_MAX), Reason.PROTOCOL_ERROR)


def test_an_oversized_frame_length_closes_that_connection_only():
    hostile_then_good_block(lambda net, c: (FRAME_MAX + 1).to_bytes(4, "big"), Reason.FRAME_TOO_LARGE)


def _hello_from(genesis, key_index: int = 9):
    def payload(net: Net, c: int) -> bytes:
        conn = Connection(LocalIdentity(node_key(key_index), genesis.chain_id, genesis.hash, ""), P2PConfig(),
                          sha256(b"hostile challenge"), HeadSummary(0, bytes(32), 1))
        return conn.data_to_send()
    return payload


def test_a_hello_for_another_genesis_closes_that_connection_only():
    hostile_then_good_block(_hello_from(OTHER_GENESIS), Reason.WRONG_GENESIS)


def test_a_hello_for_another_chain_closes_that_connection_only():
    other_chain = make_genesis(seed=SEED, accounts=4, balance=1_000_000, chain_id="chainlab-pow-elsewhere",
                               overrides={"genesis_bits": EASY_BITS, "limit_bits": EASY_BITS})
    hostile_then_good_block(_hello_from(other_chain), Reason.WRONG_CHAIN)


def test_a_node_reaching_itself_closes_without_banning():
    net = net_of(1)
    c = net.attach_raw(0, remote=address(0))
    net.step(0, BytesReceived(c, _hello_from(GENESIS, key_index=0)(net, c)))
    net.run()
    assert_refused(net, 0, c, Reason.SELF_CONNECTION)
    assert not net.nodes[0].scores.is_banned(address(0), net.nodes[0].now_ms)


class RawPeer:
    """The test plays a handshaken peer of node `i` with a real Connection."""

    def __init__(self, net: Net, i: int, key_index: int = 7, *, remote: str | None = None, expect_ready: bool = True):
        self.net, self.i = net, i
        self.conn_id = net.attach_raw(i, remote=remote or f"10.77.0.{key_index}:1234")
        self.conn = Connection(LocalIdentity(node_key(key_index), GENESIS.chain_id, GENESIS.hash, ""), P2PConfig(),
                               sha256(b"raw peer %d %d" % (key_index, self.conn_id)), HeadSummary(0, bytes(32), 1))
        self.node_id = node_id_of(node_key(key_index).public_key)
        self.events = []
        for _ in range(3):
            self.exchange()
        if expect_ready:
            assert self.conn.state is State.READY

    def exchange(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.net.step(self.i, BytesReceived(self.conn_id, data))
            self.net.run()
        self.events += self.conn.receive_data(bytes(self.net.raw_received[(self.i, self.conn_id)]))
        self.net.raw_received[(self.i, self.conn_id)].clear()

    def send(self, *messages: Message) -> None:
        for m in messages:
            assert self.conn.send(m)
        self.exchange()


def test_garbage_from_a_handshaken_peer_bans_its_node_id():
    net = line(2)
    raw = RawPeer(net, 1)
    assert raw.node_id in net.ready_peer_ids(1)
    net.step(1, BytesReceived(raw.conn_id, encode_frame(b"\x92\x04\xa1x", FRAME_MAX)))  # ping("x")
    net.run()
    assert_refused(net, 1, raw.conn_id, Reason.PROTOCOL_ERROR)
    assert net.nodes[1].scores.is_banned(raw.node_id, net.nodes[1].now_ms)
    assert net.mine(0) == net.head(1)


def test_a_malformed_gossiped_block_gets_the_peer_banned_and_disconnected():
    net = line(2)
    raw = RawPeer(net, 1)
    raw.send(Gossip(Topic.BLOCKS, b"not a block"))
    assert (1, raw.conn_id) in net.closed
    assert raw.conn.state is State.CLOSED
    assert raw.events[-1].reason == int(Reason.MISBEHAVIOUR)
    assert net.nodes[1].scores.is_banned(raw.node_id, net.nodes[1].now_ms)
    assert net.mine(0) == net.head(1)


def test_transactions_admitted_in_one_step_go_out_as_one_batch_per_peer():
    net = line(2)
    raw = RawPeer(net, 0)
    transfers = [signed_transfer(1, n) for n in range(5)]
    for n, tx in enumerate(transfers):  # one driver pass: five calls, then one Ready
        net.nodes[0].step(RpcCalled(900 + n, "tx_send", [tx.encode().hex()]))
    net.pump(0)
    net.run()
    net.relay_held()
    raw.exchange()
    gossip = [e.message for e in raw.events if isinstance(getattr(e, "message", None), (Gossip, GossipBatch))]
    assert gossip == [GossipBatch(Topic.TRANSACTIONS, tuple(tx.encode() for tx in transfers))]
    assert all(tx.txid in net.nodes[1].mempool for tx in transfers)  # node 1 got them too, and took each one


def test_a_batch_is_taken_payload_by_payload_and_a_bad_payload_bans_the_sender():
    net = line(2)
    raw = RawPeer(net, 1)
    good = [signed_transfer(2, n) for n in range(3)]
    raw.send(GossipBatch(Topic.TRANSACTIONS, tuple(tx.encode() for tx in good)))
    net.relay_held()
    assert all(tx.txid in net.nodes[1].mempool and tx.txid in net.nodes[0].mempool for tx in good)
    assert net.nodes[1].router.messages_first == 3
    raw.send(GossipBatch(Topic.TRANSACTIONS, (good[0].encode(), b"not a transaction", signed_transfer(2, 3).encode())))
    assert (1, raw.conn_id) in net.closed
    assert net.nodes[1].scores.is_banned(raw.node_id, net.nodes[1].now_ms)
    assert signed_transfer(2, 3).txid not in net.nodes[1].mempool  # nothing after the bad payload is taken


def test_a_raw_peer_is_answered_like_any_peer():
    net = line(2)
    net.mine(0)
    raw = RawPeer(net, 1)
    raw.events.clear()
    raw.send(Ping(77), GetBlocksByRange(5, 1, 10), GetPeers())
    received = [e.message for e in raw.events]
    assert Pong(77) in received
    (blocks,) = [m for m in received if isinstance(m, Blocks)]
    assert blocks.request_id == 5 and len(blocks.blocks) == 1
    (peers,) = [m for m in received if isinstance(m, Peers) and m.addresses]
    assert peers.addresses == (address(0),)


def test_simultaneous_dials_settle_on_one_connection_at_both_ends():
    net = net_of(2)
    # Both dial before either handshake completes.
    a0, a1 = net._conn_id(), net._conn_id()
    b1, b0 = net._conn_id(), net._conn_id()
    net.links.update({(0, a0): (1, a1), (1, a1): (0, a0), (1, b1): (0, b0), (0, b0): (1, b1)})
    net.nodes[0].step(PeerConnected(a0, True, address(1)))
    net.nodes[1].step(PeerConnected(a1, False, "10.9.0.1:50000"))
    net.nodes[1].step(PeerConnected(b1, True, address(0)))
    net.nodes[0].step(PeerConnected(b0, False, "10.9.1.1:50001"))
    net.run()
    (kept0,) = [c for c, p in net.nodes[0].peers.items() if p.ready]
    (kept1,) = [c for c, p in net.nodes[1].peers.items() if p.ready]
    assert net.links[(0, kept0)] == (1, kept1), "the two ends kept different connections"
    # The kept link is the one dialled by the node with the lower id.
    id0, id1 = net.nodes[0].node_id, net.nodes[1].node_id
    assert net.nodes[0].peers[kept0].outbound == (id0 < id1)
    assert net.mine(0) == net.head(1)


def test_a_banned_node_id_is_refused_on_a_new_connection_until_the_ban_is_cleared():
    net = line(2)
    raw = RawPeer(net, 1)
    net.step(1, BytesReceived(raw.conn_id, b"\x00\x00\x00\x00"))  # an empty frame
    net.run()
    assert_refused(net, 1, raw.conn_id, Reason.PROTOCOL_ERROR)
    # The same key from another address: the handshake completes, then the node id is refused.
    again = RawPeer(net, 1, key_index=7, remote="10.77.1.1:999", expect_ready=False)
    assert (1, again.conn_id) in net.closed
    assert again.events[-1].reason == int(Reason.BANNED)
    bans = net.rpc(1, "net_listBans").result
    assert raw.node_id in [b["peer"] for b in bans]
    assert net.rpc(1, "net_clearBan", [raw.node_id]).result == {"peer": raw.node_id, "cleared": True}
    third = RawPeer(net, 1, key_index=7, remote="10.77.1.2:999")
    assert raw.node_id in net.ready_peer_ids(1) and third.conn.state is State.READY


def test_too_many_inbound_connections_are_refused():
    net = Net(1)
    net.nodes[0] = NodeCore(GENESIS, node_key(0), NodeConfig(p2p=P2PConfig(peers_inbound_max=4)), random.Random(0),
                            START_MS, skip_pow_check_for_simulation=True)
    conns = [net.attach_raw(0, remote=f"10.5.0.{k}:1") for k in range(5)]
    assert [(0, c) in net.closed for c in conns] == [False] * 4 + [True]
    assert net.raw_messages(0, conns[4])[-1].reason == int(Reason.TOO_MANY_PEERS)


def test_silent_connections_time_out():
    net = line(2)
    c = net.attach_raw(1)
    p2p = P2PConfig()
    net.tick(START_MS + p2p.handshake_timeout_ms)
    assert (1, c) not in net.closed
    net.tick(START_MS + p2p.handshake_timeout_ms + 1)
    assert_refused(net, 1, c, Reason.TIMEOUT)
    # Handshaken peers ping each other and stay; a peer that stops answering goes.
    raw = RawPeer(net, 1)
    net.tick(START_MS + p2p.ping_interval_ms + 10_000)
    raw.exchange()
    assert any(getattr(e, "message", None).__class__ is Ping for e in raw.events)
    assert node_id_of(node_key(0).public_key) in net.ready_peer_ids(1)
    net.tick(START_MS + p2p.ping_interval_ms + 10_000 + p2p.peer_timeout_ms + 1)
    assert raw.node_id not in net.ready_peer_ids(1)
    assert (1, raw.conn_id) in net.closed


def test_an_orphan_block_makes_the_node_fetch_its_ancestors_from_the_sender():
    source = net_of(1)
    source.mine(0)
    source.mine(0)
    blocks = [source.nodes[0].tree.canonical[h].block for h in (1, 2)]
    net = net_of(1)
    raw = RawPeer(net, 0)
    raw.events.clear()
    raw.send(Gossip(Topic.BLOCKS, blocks[1].encode()))  # block 2 first: its parent is unknown
    assert net.height(0) == 0 and len(net.nodes[0].orphans) == 1
    (request,) = [e.message for e in raw.events if isinstance(e.message, GetBlocksByRange)]
    assert (request.start_height, request.count) == (1, 1)
    raw.send(Blocks(request.request_id, (blocks[0].encode(),)))
    assert net.height(0) == 2 and net.head(0) == blocks[1].hash.hex()
    assert len(net.nodes[0].orphans) == 0


def test_unsolicited_responses_add_up_to_a_ban():
    net = line(2)
    raw = RawPeer(net, 1)
    for k in range(3):
        raw.send(Blocks(1000 + k, ()))
        assert raw.conn.state is State.READY
    assert net.nodes[1].scores.scores[raw.node_id] == -75
    raw.send(Blocks(2000, ()))
    assert raw.conn.state is State.CLOSED and raw.events[-1].reason == int(Reason.MISBEHAVIOUR)
    assert net.nodes[1].scores.is_banned(raw.node_id, net.nodes[1].now_ms)


# --- step never raises -------------------------------------------------------------------------------

hostile_messages = st.one_of(
    st.builds(Gossip, st.sampled_from([1, 2, 3, 4, 200]), st.binary(max_size=200)),
    st.builds(Blocks, st.integers(min_value=0, max_value=5), st.lists(st.binary(max_size=100), max_size=3).map(tuple)),
    st.builds(GetBlocksByRange, st.integers(min_value=0, max_value=2**64 - 1),
              st.integers(min_value=0, max_value=2**64 - 1), st.integers(min_value=0, max_value=2**64 - 1)),
    st.builds(GetBlocksByHash, st.integers(min_value=0, max_value=9),
              st.lists(st.binary(min_size=32, max_size=32), max_size=70).map(tuple)),
    st.builds(Status, st.builds(HeadSummary, st.integers(min_value=0, max_value=2**64 - 1),
                                st.binary(min_size=32, max_size=32), st.integers(min_value=0, max_value=2**300))),
    st.builds(Peers, st.lists(st.text(max_size=20), max_size=40).map(tuple)),
    st.builds(Ping, st.integers(min_value=0, max_value=2**64 - 1)),
    st.builds(Pong, st.integers(min_value=0, max_value=2**64 - 1)),
    st.builds(Goodbye, st.integers(min_value=0, max_value=2**16), st.text(max_size=20)),
    st.just(GetPeers()),
)
chunks = st.one_of(
    st.binary(max_size=80),
    hostile_messages.map(lambda m: encode_frame(encode_message(m), FRAME_MAX)),
)


def fuzz_target() -> tuple[Net, RawPeer]:
    net = line(2)
    return net, RawPeer(net, 1)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.lists(chunks, min_size=1, max_size=6))
def test_step_never_raises_on_hostile_bytes_from_a_live_connection(data):
    net, raw = fuzz_target()
    for chunk in data:
        net.step(1, BytesReceived(raw.conn_id, chunk))  # must not raise
        net.run()
    net.tick(START_MS + 1_000)
    # Whatever happened to the hostile connection, the good peer is still there and works.
    assert node_id_of(node_key(0).public_key) in net.ready_peer_ids(1)
    assert net.mine(0) == net.head(1)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.lists(st.binary(min_size=1, max_size=100), min_size=1, max_size=5))
def test_step_never_raises_on_random_bytes_before_the_handshake(data):
    net = net_of(1)
    c = net.attach_raw(0)
    for chunk in data:
        net.step(0, BytesReceived(c, chunk))
        net.run()
    if (0, c) in net.closed:
        assert c not in net.nodes[0].peers


# --- RPC ----------------------------------------------------------------------------------------------


def test_an_unknown_method_is_method_not_found():
    net = net_of(1)
    reply = net.rpc(0, "chain_doesNotExist", [])
    assert reply.result is None and reply.error[0] == METHOD_NOT_FOUND == -32601
    assert "chain_doesNotExist" in reply.error[1]


@pytest.mark.parametrize(
    "method, params",
    [
        ("miner_generate", ["one"]),
        ("miner_generate", [0]),
        ("miner_generate", []),
        ("miner_generate", [True]),
        ("chain_getBlock", []),
        ("chain_getBlock", [0, "yes"]),
        ("chain_getBlockHash", [-1]),
        ("chain_getAccount", ["zz"]),
        ("chain_getAccount", ["00" * 19]),
        ("chain_getHead", [1]),  # takes none
        ("chain_getHead", "not a list"),
        ("mempool_list", {"limit": 1, "extra": 2}),
        ("tx_send", ["not hex"]),
        ("tx_send", ["00ff"]),  # hex, but not a transaction
        ("tx_send", [12]),
    ],
)
def test_wrong_params_are_invalid_params(method, params):
    net = net_of(1)
    reply = net.rpc(0, method, params)
    assert reply.result is None and reply.error is not None
    assert reply.error[0] == INVALID_PARAMS == -32602, reply.error


def test_tx_send_returns_the_txid_and_the_transaction_is_pending():
    net = net_of(1)
    transfer = signed_transfer(0, 0)
    reply = net.rpc(0, "tx_send", [transfer.encode().hex()])
    assert reply.error is None and reply.result == transfer.txid.hex()
    status = net.rpc(0, "mempool_status").result
    assert status["size"] == 1 and status["senders"] == 1 and status["rejected"] == 0
    listed = net.rpc(0, "mempool_list").result
    assert [t["txid"] for t in listed] == [transfer.txid.hex()]
    assert net.rpc(0, "chain_getTransaction", [transfer.txid.hex()]).result["status"] == "pending"
    # The same transaction again is refused with the application error code.
    again = net.rpc(0, "tx_send", {"hex": transfer.encode().hex()})
    assert again.error[0] == TX_REJECTED and "AlreadyKnown" in again.error[1]


def test_tx_send_of_an_unaffordable_transfer_is_rejected():
    net = net_of(1)
    reply = net.rpc(0, "tx_send", [signed_transfer(0, 0, amount=10**9).encode().hex()])
    assert reply.error[0] == TX_REJECTED and "CannotAfford" in reply.error[1]
    assert net.rpc(0, "mempool_status").result["size"] == 0


def test_tx_send_of_a_forged_transaction_is_rejected_not_a_crash():
    net = net_of(1)
    # Regression: the signature error once escaped tx_send and made step() raise.
    forged = signed_transfer(0, 0)._replace(amount=999)
    reply = net.rpc(0, "tx_send", [forged.encode().hex()])
    assert reply.result is None and reply.error[0] == TX_REJECTED
    status = net.rpc(0, "mempool_status").result
    assert status["size"] == 0 and status["rejected"] == 1
