"""The peer connection state machine (p2p.connection, DESIGN.md section 4).

What: two Connections complete the Hello / HelloProof handshake and learn each
other's node id, key, listen address and head; messages then flow both ways. Every
hostile input (bad frames, bad msgpack, wrong types, messages out of order, another
chain or genesis or protocol version, a forged or misdirected proof, ourselves, an
echoed challenge) ends in exactly one ConnectionClosed with the right Reason and a
Goodbye with that reason queued for the peer -- and receive_data never raises. After
the close, input is ignored.

How: ConnectionPair (after h11's tests/helpers.py) owns two Connections and moves
`data_to_send()` from one to the other's `receive_data`. Hostile cases play the peer
by hand: they write frames with encode_message / encode_frame, or raw bytes, and
decode what our side sent back. A hypothesis test throws random chunks at a live
connection.
"""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consensus.crypto import KeyPair, sha256, verify
from p2p.config import PROTOCOL_VERSION, P2PConfig
from p2p.connection import (
    Connection,
    ConnectionClosed,
    HandshakeCompleted,
    LocalIdentity,
    MessageReceived,
    State,
    node_id_of,
    proof_bytes,
)
from p2p.errors import HandshakeFailed, ProtocolError, Reason
from p2p.framing import FrameDecoder, encode_frame
from p2p.messages import (
    Blocks,
    GetBlocksByRange,
    GetPeers,
    Goodbye,
    Gossip,
    HeadSummary,
    Hello,
    HelloProof,
    Message,
    Peers,
    Ping,
    Pong,
    Status,
    Topic,
    decode_message,
    encode_message,
)

CONFIG = P2PConfig()
CHAIN = "chainlab-pow-test"
GENESIS = sha256(b"test genesis")
OTHER_GENESIS = sha256(b"another genesis")


def node_key(i: int) -> KeyPair:
    return KeyPair.derive("test-connection", "node", i)


def identity(i: int, *, chain_id: str = CHAIN, genesis_hash: bytes = GENESIS, key: KeyPair | None = None) -> LocalIdentity:
    return LocalIdentity(key or node_key(i), chain_id, genesis_hash, f"127.0.0.1:{9000 + i}")


def head(height: int) -> HeadSummary:
    return HeadSummary(height, sha256(b"head %d" % height), 1000 * height)


def challenge(i: int) -> bytes:
    return sha256(b"challenge %d" % i)


def frame(msg: Message) -> bytes:
    return encode_frame(encode_message(msg), CONFIG.frame_bytes_max)


def sent_messages(conn: Connection) -> list[Message]:
    """Decode everything `conn` wants to send (and take it)."""
    frames = FrameDecoder(CONFIG.frame_bytes_max).feed(conn.data_to_send())
    return [decode_message(f) for f in frames]


class ConnectionPair:
    """Two connections, "a" (index 0) and "b" (index 1), wired back to back."""

    def __init__(self, a: LocalIdentity | None = None, b: LocalIdentity | None = None,
                 a_head: HeadSummary = head(5), b_head: HeadSummary = head(7)):
        self.conn = {
            "a": Connection(a or identity(0), CONFIG, challenge(0), a_head),
            "b": Connection(b or identity(1), CONFIG, challenge(1), b_head),
        }
        self.events: dict[str, list] = {"a": [], "b": []}

    @property
    def a(self) -> Connection:
        return self.conn["a"]

    @property
    def b(self) -> Connection:
        return self.conn["b"]

    @staticmethod
    def other(side: str) -> str:
        return "b" if side == "a" else "a"

    def deliver(self, side: str) -> list:
        """Move what `side` has queued to the other side; return the events there."""
        data = self.conn[side].data_to_send()
        receiver = self.other(side)
        events = self.conn[receiver].receive_data(data) if data else []
        self.events[receiver].extend(events)
        return events

    def exchange(self) -> None:
        """Deliver both ways until nothing is left to send."""
        for _ in range(10):
            if not (self.a.pending_frames() or self.b.pending_frames()):
                return
            self.deliver("a")
            self.deliver("b")
        raise AssertionError("the connections keep talking")

    def handshake(self) -> "ConnectionPair":
        self.exchange()
        assert self.a.state is State.READY and self.b.state is State.READY
        self.events = {"a": [], "b": []}
        return self


# --- the handshake -------------------------------------------------------------------


def test_both_sides_send_hello_at_once():
    pair = ConnectionPair()
    (hello,) = sent_messages(pair.a)
    assert hello == Hello(PROTOCOL_VERSION, CHAIN, GENESIS, node_key(0).public_key, "127.0.0.1:9000", head(5), challenge(0))
    assert pair.a.state is State.AWAIT_HELLO


def test_handshake_completes_on_both_sides_with_the_right_ids_and_heads():
    pair = ConnectionPair()
    pair.exchange()
    assert pair.a.state is State.READY and pair.b.state is State.READY
    assert pair.events["a"] == [HandshakeCompleted(node_id_of(node_key(1).public_key), node_key(1).public_key,
                                                   "127.0.0.1:9001", head(7))]
    assert pair.events["b"] == [HandshakeCompleted(node_id_of(node_key(0).public_key), node_key(0).public_key,
                                                   "127.0.0.1:9000", head(5))]
    assert pair.a.peer_node_id == node_id_of(node_key(1).public_key) != pair.b.peer_node_id


def test_node_id_is_32_hex_characters_and_differs_per_key():
    ids = {node_id_of(node_key(i).public_key) for i in range(10)}
    assert len(ids) == 10
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)


def test_the_proof_is_a_signature_over_the_peers_challenge():
    pair = ConnectionPair()
    pair.deliver("b")  # a reads b's Hello and answers with its proof
    assert pair.a.state is State.AWAIT_PROOF
    hello, proof = sent_messages(pair.a)
    assert isinstance(hello, Hello) and isinstance(proof, HelloProof)
    assert verify(node_key(0).public_key, proof.signature, proof_bytes(GENESIS, challenge(1), node_key(0).public_key))


def test_messages_flow_both_ways_once_ready():
    pair = ConnectionPair().handshake()
    assert pair.a.send(Ping(42))
    assert pair.deliver("a") == [MessageReceived(Ping(42))]
    assert pair.b.send(Pong(42))
    assert pair.b.send(Status(head(8)))
    assert pair.b.send(Gossip(Topic.BLOCKS, b"block bytes"))
    assert pair.deliver("b") == [
        MessageReceived(Pong(42)),
        MessageReceived(Status(head(8))),
        MessageReceived(Gossip(Topic.BLOCKS, b"block bytes")),
    ]
    pair.events = {"a": [], "b": []}
    assert pair.a.send(GetBlocksByRange(1, 1, 64)) and pair.b.send(Blocks(1, (b"x", b"y")))
    assert pair.a.send(GetPeers()) and pair.b.send(Peers(("127.0.0.1:1",)))
    pair.exchange()
    assert [e.message for e in pair.events["b"]] == [GetBlocksByRange(1, 1, 64), GetPeers()]
    assert [e.message for e in pair.events["a"]] == [Blocks(1, (b"x", b"y")), Peers(("127.0.0.1:1",))]


def test_messages_delivered_a_byte_at_a_time_arrive_whole():
    pair = ConnectionPair()
    pair.exchange()
    pair.a.send(Ping(1))
    pair.a.send(Gossip(Topic.TRANSACTIONS, b"t" * 300))
    data = pair.a.data_to_send()
    events = []
    for i in range(len(data)):
        events.extend(pair.b.receive_data(data[i : i + 1]))
    assert events == [MessageReceived(Ping(1)), MessageReceived(Gossip(Topic.TRANSACTIONS, b"t" * 300))]


def test_nothing_but_the_handshake_can_be_sent_before_ready():
    pair = ConnectionPair()
    assert pair.a.send(Ping(1)) is False
    assert pair.a.pending_frames() == 1  # only the Hello


# --- closing -----------------------------------------------------------------------------


def test_goodbye_from_the_peer_closes_by_peer_and_sends_nothing_back():
    pair = ConnectionPair().handshake()
    closed = pair.b.close(Reason.SHUTDOWN, "going away")
    assert closed == ConnectionClosed(int(Reason.SHUTDOWN), "going away", by_peer=False)
    assert pair.deliver("b") == [ConnectionClosed(int(Reason.SHUTDOWN), "going away", by_peer=True)]
    assert pair.a.state is State.CLOSED
    assert pair.a.data_to_send() == b""  # no Goodbye answers a Goodbye
    assert pair.a.send(Ping(1)) is False


def test_goodbye_during_the_handshake_closes_by_peer():
    pair = ConnectionPair()
    pair.a.close(Reason.SHUTDOWN, "stopping")  # a's Hello and then its Goodbye are queued
    events = pair.deliver("a")
    assert events == [ConnectionClosed(int(Reason.SHUTDOWN), "stopping", by_peer=True)]
    assert pair.b.state is State.CLOSED
    # b answered a's Hello with its proof before the Goodbye came, and nothing after it.
    assert [type(m) for m in sent_messages(pair.b)] == [Hello, HelloProof]


def test_close_is_idempotent_and_sends_one_goodbye():
    pair = ConnectionPair().handshake()
    pair.a.close(Reason.REMOVED, "removed")
    pair.a.close(Reason.SHUTDOWN, "again")
    assert sent_messages(pair.a) == [Goodbye(int(Reason.REMOVED), "removed")]


def test_long_goodbye_text_is_truncated_to_what_the_peer_accepts():
    pair = ConnectionPair().handshake()
    pair.a.close(Reason.SHUTDOWN, "x" * 1000)
    events = pair.deliver("a")
    assert events == [ConnectionClosed(int(Reason.SHUTDOWN), "x" * CONFIG.goodbye_text_chars_max, by_peer=True)]


# --- hostile input -------------------------------------------------------------------------


def fresh(i: int = 0, **kw) -> Connection:
    """Our side of a new connection, its Hello already flushed."""
    conn = Connection(identity(i, **kw), CONFIG, challenge(i), head(3))
    conn.data_to_send()
    return conn


def peer_hello(i: int = 1, *, version: int = PROTOCOL_VERSION, chain_id: str = CHAIN, genesis_hash: bytes = GENESIS,
               key: KeyPair | None = None, peer_challenge: bytes | None = None) -> Hello:
    key = key or node_key(i)
    return Hello(version, chain_id, genesis_hash, key.public_key, f"127.0.0.1:{9000 + i}", head(4),
                 peer_challenge or challenge(i))


def proof_for(our_challenge: bytes, *, key: KeyPair | None = None, genesis_hash: bytes = GENESIS,
              claimed_key: KeyPair | None = None) -> HelloProof:
    """The proof the peer (node 1 by default) sends: its signature over our challenge."""
    key = key or node_key(1)
    claimed = claimed_key or key
    return HelloProof(key.sign(proof_bytes(genesis_hash, our_challenge, claimed.public_key)))


def ready_conn() -> Connection:
    conn = fresh(0)
    events = conn.receive_data(frame(peer_hello()) + frame(proof_for(challenge(0))))
    assert [type(e) for e in events] == [HandshakeCompleted]
    conn.data_to_send()  # our proof
    return conn


def assert_closed_with(conn: Connection, events: list, reason: Reason) -> ConnectionClosed:
    """One ConnectionClosed, last, by us, with `reason`; a Goodbye with it queued for the peer."""
    closes = [e for e in events if isinstance(e, ConnectionClosed)]
    assert len(closes) == 1 and events[-1] is closes[0], events
    closed = closes[0]
    assert closed.reason == int(reason), (Reason.describe(closed.reason), closed.text)
    assert closed.by_peer is False
    assert isinstance(closed.error, ProtocolError) and closed.error.reason is reason
    assert conn.state is State.CLOSED
    sent = sent_messages(conn)
    assert sent and sent[-1] == Goodbye(int(reason), closed.text[: CONFIG.goodbye_text_chars_max])
    # After the close, input is ignored and nothing more is sent.
    assert conn.receive_data(frame(Ping(1))) == []
    assert conn.receive_data(b"\xff" * 100) == []
    assert conn.data_to_send() == b""
    assert conn.send(Ping(2)) is False
    return closed


def oversized_length() -> bytes:
    return (CONFIG.frame_bytes_max + 1).to_bytes(4, "big")


BAD_BYTES = {
    "oversized_length": (oversized_length(), Reason.FRAME_TOO_LARGE),
    "max_length": (b"\xff\xff\xff\xff", Reason.FRAME_TOO_LARGE),
    "empty_frame": (b"\x00\x00\x00\x00", Reason.PROTOCOL_ERROR),
    # A Ping frame cut after its first two body bytes, garbage filling the announced length.
    "truncated_then_garbage": (frame(Ping(300))[:-3] + b"\xc1\xc1\xc1", Reason.PROTOCOL_ERROR),
    "garbage_msgpack": (encode_frame(b"\xc1\xc1\xc1", CONFIG.frame_bytes_max), Reason.PROTOCOL_ERROR),
    "not_an_array": (encode_frame(b"\x04", CONFIG.frame_bytes_max), Reason.PROTOCOL_ERROR),
    "unknown_type": (encode_frame(b"\x91\x63", CONFIG.frame_bytes_max), Reason.PROTOCOL_ERROR),
    "text_for_int": (encode_frame(b"\x92\x04\xa11", CONFIG.frame_bytes_max), Reason.PROTOCOL_ERROR),  # ping("1")
    "int_for_bytes": (encode_frame(b"\x93\x07\x01\x05", CONFIG.frame_bytes_max), Reason.PROTOCOL_ERROR),  # gossip(1, 5)
    "float_for_int": (encode_frame(b"\x92\x04\xcb" + bytes(8), CONFIG.frame_bytes_max), Reason.PROTOCOL_ERROR),
    "non_canonical": (encode_frame(b"\x92\x04\xcc\x01", CONFIG.frame_bytes_max), Reason.PROTOCOL_ERROR),
}


@pytest.mark.parametrize("name", sorted(BAD_BYTES))
def test_bad_bytes_on_a_ready_connection_close_it(name):
    data, reason = BAD_BYTES[name]
    conn = ready_conn()
    assert_closed_with(conn, conn.receive_data(data), reason)


@pytest.mark.parametrize("name", sorted(BAD_BYTES))
def test_bad_bytes_before_the_handshake_close_it(name):
    data, reason = BAD_BYTES[name]
    conn = fresh()
    assert_closed_with(conn, conn.receive_data(data), reason)


def test_an_oversized_length_closes_before_any_body_arrives():
    conn = ready_conn()
    assert conn.receive_data(oversized_length()[:2]) == []
    assert conn.state is State.READY
    assert_closed_with(conn, conn.receive_data(oversized_length()[2:]), Reason.FRAME_TOO_LARGE)


def test_good_frames_before_bad_ones_in_separate_reads_are_delivered():
    conn = ready_conn()
    assert conn.receive_data(frame(Ping(9))) == [MessageReceived(Ping(9))]
    assert_closed_with(conn, conn.receive_data(b"\x00\x00\x00\x00"), Reason.PROTOCOL_ERROR)


def test_events_do_not_depend_on_how_the_bytes_were_split():
    data = frame(Ping(9)) + oversized_length()
    split = ready_conn()
    events_split = split.receive_data(data[:len(data) - 4]) + split.receive_data(data[len(data) - 4:])
    whole = ready_conn()
    events_whole = whole.receive_data(data)
    assert events_split[0] == MessageReceived(Ping(9))
    assert [type(e) for e in events_whole] == [type(e) for e in events_split]


def test_a_message_before_hello_closes():
    conn = fresh()
    closed = assert_closed_with(conn, conn.receive_data(frame(Ping(1))), Reason.PROTOCOL_ERROR)
    assert "expected hello" in closed.text


def test_a_proof_before_hello_closes():
    conn = fresh()
    assert_closed_with(conn, conn.receive_data(frame(proof_for(challenge(0)))), Reason.PROTOCOL_ERROR)


def test_gossip_before_the_proof_closes():
    conn = fresh()
    events = conn.receive_data(frame(peer_hello()) + frame(Gossip(Topic.BLOCKS, b"early")))
    closed = assert_closed_with(conn, events, Reason.PROTOCOL_ERROR)
    assert "expected hello proof" in closed.text


def test_a_second_hello_before_the_proof_closes():
    conn = fresh()
    events = conn.receive_data(frame(peer_hello()) + frame(peer_hello()))
    assert_closed_with(conn, events, Reason.PROTOCOL_ERROR)


def test_a_second_hello_after_ready_closes():
    conn = ready_conn()
    closed = assert_closed_with(conn, conn.receive_data(frame(peer_hello())), Reason.PROTOCOL_ERROR)
    assert "after the handshake" in closed.text


def test_a_second_proof_after_ready_closes():
    conn = ready_conn()
    assert_closed_with(conn, conn.receive_data(frame(proof_for(challenge(0)))), Reason.PROTOCOL_ERROR)


@pytest.mark.parametrize(
    "hello, reason",
    [
        (peer_hello(chain_id="chainlab-pow-other"), Reason.WRONG_CHAIN),
        (peer_hello(genesis_hash=OTHER_GENESIS), Reason.WRONG_GENESIS),
        (peer_hello(version=PROTOCOL_VERSION + 1), Reason.VERSION_MISMATCH),
        (peer_hello(version=0), Reason.VERSION_MISMATCH),
        (peer_hello(key=node_key(0)), Reason.SELF_CONNECTION),  # our own key
        (peer_hello(peer_challenge=challenge(0)), Reason.BAD_HANDSHAKE),  # echoes our challenge
    ],
    ids=["wrong_chain", "wrong_genesis", "newer_version", "older_version", "self", "echoed_challenge"],
)
def test_a_hello_we_refuse_closes_with_its_reason(hello, reason):
    conn = fresh()
    closed = assert_closed_with(conn, conn.receive_data(frame(hello)), reason)
    assert isinstance(closed.error, HandshakeFailed)
    assert conn.peer_hello is None  # nothing about a refused peer is kept
    assert conn.peer_node_id is None


def test_wrong_chain_between_two_real_connections_closes_both():
    pair = ConnectionPair(b=identity(1, chain_id="chainlab-pow-elsewhere"))
    # Both Hellos are in flight at once: each side refuses the other's.
    a_data, b_data = pair.a.data_to_send(), pair.b.data_to_send()
    assert_closed_with(pair.a, pair.a.receive_data(b_data), Reason.WRONG_CHAIN)
    assert_closed_with(pair.b, pair.b.receive_data(a_data), Reason.WRONG_CHAIN)


def test_connecting_to_ourselves_is_refused_on_both_ends():
    # Same identity on both ends (we dialled our own listen address); the challenges differ.
    me = identity(0)
    pair = ConnectionPair(a=me, b=me)
    a_data, b_data = pair.a.data_to_send(), pair.b.data_to_send()
    assert_closed_with(pair.a, pair.a.receive_data(b_data), Reason.SELF_CONNECTION)
    assert_closed_with(pair.b, pair.b.receive_data(a_data), Reason.SELF_CONNECTION)


@pytest.mark.parametrize(
    "proof",
    [
        proof_for(challenge(9)),  # signed over the wrong challenge
        proof_for(challenge(1)),  # signed over the peer's own challenge (a replayed proof)
        proof_for(challenge(0), key=node_key(2)),  # by another key than the one in the Hello
        proof_for(challenge(0), key=node_key(2), claimed_key=node_key(1)),  # another key claiming to be node 1
        proof_for(challenge(0), genesis_hash=OTHER_GENESIS),  # bound to another genesis
        HelloProof(bytes(64)),
        HelloProof(b"\xff" * 64),
    ],
    ids=["wrong_challenge", "own_challenge", "other_key", "other_key_claiming", "other_genesis", "zeros", "ones"],
)
def test_a_bad_proof_is_a_bad_handshake(proof):
    conn = fresh()
    events = conn.receive_data(frame(peer_hello()))
    assert events == [] and conn.state is State.AWAIT_PROOF
    conn.data_to_send()  # our proof went out already; the peer's is what is checked
    closed = assert_closed_with(conn, conn.receive_data(frame(proof)), Reason.BAD_HANDSHAKE)
    assert "does not verify" in closed.text


def test_a_good_proof_completes_the_handshake():
    conn = fresh()
    events = conn.receive_data(frame(peer_hello()) + frame(proof_for(challenge(0))))
    assert events == [HandshakeCompleted(node_id_of(node_key(1).public_key), node_key(1).public_key,
                                         "127.0.0.1:9001", head(4))]


def test_hello_proof_and_messages_in_one_read_are_all_delivered():
    conn = fresh()
    data = frame(peer_hello()) + frame(proof_for(challenge(0))) + frame(Ping(5)) + frame(Goodbye(8, "bye"))
    events = conn.receive_data(data)
    assert [type(e) for e in events] == [HandshakeCompleted, MessageReceived, ConnectionClosed]
    assert events[-1] == ConnectionClosed(8, "bye", by_peer=True)


def test_input_after_a_peer_goodbye_in_the_same_read_is_ignored():
    conn = ready_conn()
    events = conn.receive_data(frame(Goodbye(8, "bye")) + frame(Ping(1)) + frame(peer_hello()))
    assert events == [ConnectionClosed(8, "bye", by_peer=True)]
    assert conn.data_to_send() == b""


def test_a_goodbye_followed_by_garbage_in_the_same_read_is_still_the_peers_goodbye():
    conn = ready_conn()
    events = conn.receive_data(frame(Goodbye(8, "bye")) + b"\xff\xff\xff\xff")
    assert events == [ConnectionClosed(8, "bye", by_peer=True)]


def test_a_goodbye_with_an_unknown_reason_still_closes_by_peer():
    conn = ready_conn()
    assert conn.receive_data(frame(Goodbye(999, ""))) == [ConnectionClosed(999, "", by_peer=True)]
    assert Reason.describe(999) == "unknown(999)"


# --- fuzz ------------------------------------------------------------------------------------


def _check_after_random_input(conn: Connection, chunks: list[bytes]) -> None:
    closed_events = []
    for chunk in chunks:
        was_closed = conn.state is State.CLOSED
        events = conn.receive_data(chunk)  # must not raise
        if was_closed:
            assert events == []
        closed_events.extend(e for e in events if isinstance(e, ConnectionClosed))
        assert all(not isinstance(e, ConnectionClosed) for e in events[:-1])
        assert conn._decoder.buffered_bytes <= CONFIG.frame_bytes_max
    assert len(closed_events) <= 1
    if closed_events:
        assert conn.state is State.CLOSED
        if not closed_events[0].by_peer:
            assert sent_messages(conn)[-1] == Goodbye(closed_events[0].reason, closed_events[0].text[:256])


frames_or_bytes = st.one_of(
    st.binary(max_size=64),
    st.builds(lambda n, b: n.to_bytes(4, "big") + b, st.integers(min_value=0, max_value=2**32 - 1), st.binary(max_size=64)),
    st.binary(min_size=1, max_size=64).map(lambda b: encode_frame(b, CONFIG.frame_bytes_max)),
    st.sampled_from([frame(Ping(1)), frame(peer_hello()), frame(proof_for(challenge(0))), frame(Goodbye(1, "x")),
                     frame(Gossip(1, b"p")), frame(Status(head(9)))]),
)


@settings(max_examples=300, deadline=None)
@given(chunks=st.lists(frames_or_bytes, min_size=1, max_size=8))
def test_random_chunks_after_the_handshake_never_raise(chunks):
    _check_after_random_input(ready_conn(), chunks)


@settings(max_examples=200, deadline=None)
@given(chunks=st.lists(frames_or_bytes, min_size=1, max_size=8))
def test_random_chunks_during_the_handshake_never_raise(chunks):
    _check_after_random_input(fresh(), chunks)
