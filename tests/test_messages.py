"""Wire messages (p2p.messages, DESIGN.md section 4).

What: every message type survives encode -> decode unchanged, and every way a frame
body can be wrong comes out as p2p.errors.MalformedMessage (never a DecodeError,
KeyError, IndexError or TypeError): unknown type ids, wrong field counts, wrong field
types (text for an integer, an integer for bytes, floats, booleans, nil, ext), lists
and strings over their limits, non-minimal cumulative score bytes and non-canonical
msgpack.

How: hypothesis strategies build each message within its limits for the round trip.
Hostile bodies are built with msgpack.packb from plain lists (so the test, not the
code under test, decides the shape) or by hand-writing msgpack bytes where packb
would pick the canonical form. Finally hypothesis throws arbitrary bytes and mutated
valid encodings at decode_message.
"""

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consensus.types import CHAIN_ID_CHARS_MAX
from p2p.errors import MalformedMessage, ProtocolError, Reason
from p2p.messages import (
    GOODBYE_TEXT_CHARS_MAX,
    LISTEN_ADDRESS_CHARS_MAX,
    LIST_ITEMS_MAX,
    SCORE_BYTES_MAX,
    TYPE_IDS,
    Blocks,
    GetBlocksByHash,
    GetBlocksByRange,
    GetPeers,
    Goodbye,
    Gossip,
    GossipBatch,
    HeadSummary,
    Hello,
    HelloProof,
    Peers,
    Ping,
    Pong,
    Status,
    decode_message,
    encode_message,
)

U64 = st.integers(min_value=0, max_value=2**64 - 1)


def text(max_size: int) -> st.SearchStrategy[str]:
    return st.text(alphabet=st.characters(codec="utf-8"), max_size=max_size)


hashes = st.binary(min_size=32, max_size=32)
heads = st.builds(HeadSummary, U64, hashes, st.integers(min_value=0, max_value=2 ** (8 * SCORE_BYTES_MAX) - 1))
hellos = st.builds(
    Hello,
    st.integers(min_value=0, max_value=2**16),
    text(CHAIN_ID_CHARS_MAX),
    hashes,
    st.binary(min_size=32, max_size=32),
    text(LISTEN_ADDRESS_CHARS_MAX),
    heads,
    st.binary(min_size=32, max_size=32),
)
messages = st.one_of(
    hellos,
    st.builds(HelloProof, st.binary(min_size=64, max_size=64)),
    st.builds(Goodbye, st.integers(min_value=0, max_value=2**16), text(GOODBYE_TEXT_CHARS_MAX)),
    st.builds(Ping, U64),
    st.builds(Pong, U64),
    st.builds(Status, heads),
    st.builds(Gossip, st.integers(min_value=0, max_value=255), st.binary(max_size=300)),
    st.builds(GossipBatch, st.integers(min_value=0, max_value=255), st.lists(st.binary(max_size=100), max_size=10).map(tuple)),
    st.builds(GetBlocksByRange, U64, U64, U64),
    st.builds(GetBlocksByHash, U64, st.lists(hashes, max_size=20).map(tuple)),
    st.builds(Blocks, U64, st.lists(st.binary(max_size=100), max_size=10).map(tuple)),
    st.just(GetPeers()),
    st.builds(Peers, st.lists(text(LISTEN_ADDRESS_CHARS_MAX), max_size=10).map(tuple)),
)


def pack(*items) -> bytes:
    return msgpack.packb(list(items), use_bin_type=True)


def head_wire(score_bytes: bytes = b"\x01", height=1, block_hash=b"\x11" * 32) -> list:
    return [height, block_hash, score_bytes]


def hello_fields(**changes) -> list:
    fields = dict(
        protocol_version=1, chain_id="chainlab-pow-test", genesis_hash=b"\x22" * 32, public_key=b"\x33" * 32,
        listen_address="127.0.0.1:9000", head=head_wire(), challenge=b"\x44" * 32,
    )
    fields.update(changes)
    return list(fields.values())


def malformed(body: bytes) -> MalformedMessage:
    with pytest.raises(MalformedMessage) as info:
        decode_message(body)
    # Every decode failure closes the connection as a protocol error.
    assert isinstance(info.value, ProtocolError) and info.value.reason is Reason.PROTOCOL_ERROR
    return info.value


# --- round trips ---------------------------------------------------------------------


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(msg=messages)
def test_every_message_round_trips(msg):
    body = encode_message(msg)
    decoded = decode_message(body)
    assert type(decoded) is type(msg)
    assert decoded == msg
    assert encode_message(decoded) == body  # one encoding only


def test_each_message_type_has_one_type_id_from_1_to_13():
    # One instance of every type the round-trip strategy builds; a new message type
    # fails here until it is added to `messages` above and to this list.
    covered = {type(example) for example in (
        Hello(1, "", b"\0" * 32, b"\0" * 32, "", HeadSummary(0, b"\0" * 32, 0), b"\0" * 32),
        HelloProof(b"\0" * 64), Goodbye(0, ""), Ping(0), Pong(0), Status(HeadSummary(0, b"\0" * 32, 0)),
        Gossip(0, b""), GetBlocksByRange(0, 0, 0), GetBlocksByHash(0, ()), Blocks(0, ()), GetPeers(), Peers(()),
        GossipBatch(0, ()),
    )}
    assert covered == set(TYPE_IDS)
    assert sorted(TYPE_IDS.values()) == list(range(1, 14))


def test_the_encoding_is_type_id_then_fields():
    assert encode_message(Ping(7)) == pack(4, 7)
    assert encode_message(GetPeers()) == pack(11)
    assert encode_message(Status(HeadSummary(3, b"\x11" * 32, 0x0102))) == pack(6, [3, b"\x11" * 32, b"\x01\x02"])


@pytest.mark.parametrize("score", [0, 1, 255, 256, 2**64, 2 ** (8 * SCORE_BYTES_MAX) - 1])
def test_head_scores_round_trip_at_the_byte_boundaries(score):
    msg = Status(HeadSummary(0, b"\x00" * 32, score))
    assert decode_message(encode_message(msg)).head.score == score


def test_a_score_over_the_byte_limit_is_malformed():
    body = encode_message(Status(HeadSummary(0, b"\x00" * 32, 2 ** (8 * SCORE_BYTES_MAX))))
    malformed(body)


# --- envelope --------------------------------------------------------------------------


@pytest.mark.parametrize("type_id", [0, 14, 99, 255])
def test_an_unknown_type_id_is_malformed(type_id):
    assert "unknown message type" in str(malformed(pack(type_id)))


@pytest.mark.parametrize(
    "body",
    [
        pack(),  # empty array
        msgpack.packb(4),  # not an array
        msgpack.packb({"type": 4}),  # a map
        msgpack.packb(b"\x04\x01", use_bin_type=True),  # bytes
        pack(256, 1),  # type id over a byte
        pack(-1),
        pack("4", 1),  # type id as text
        pack(4.0, 1),  # type id as a float
        pack(True, 1),  # bool is not an integer on the wire
        pack(None),
        b"",  # no bytes at all
    ],
)
def test_a_broken_envelope_is_malformed(body):
    malformed(body)


# --- field counts ------------------------------------------------------------------------

VALID_FIELDS = {
    1: hello_fields(),
    2: [b"\x55" * 64],
    3: [1, "bye"],
    4: [1],
    5: [1],
    6: [head_wire()],
    7: [1, b"payload"],
    8: [1, 2, 3],
    9: [1, [b"\x11" * 32]],
    10: [1, [b"block"]],
    11: [],
    12: [["127.0.0.1:1"]],
}


@pytest.mark.parametrize("type_id", sorted(VALID_FIELDS))
def test_the_valid_field_lists_used_below_do_decode(type_id):
    # The hostile cases below each change one thing of these; they must start valid.
    assert TYPE_IDS[type(decode_message(pack(type_id, *VALID_FIELDS[type_id])))] == type_id


@pytest.mark.parametrize("type_id", sorted(VALID_FIELDS))
def test_one_field_too_many_is_malformed(type_id):
    malformed(pack(type_id, *VALID_FIELDS[type_id], 0))


@pytest.mark.parametrize("type_id", sorted(t for t, f in VALID_FIELDS.items() if f))
def test_one_field_too_few_is_malformed(type_id):
    malformed(pack(type_id, *VALID_FIELDS[type_id][:-1]))


@pytest.mark.parametrize("type_id", sorted(t for t, f in VALID_FIELDS.items() if f))
def test_no_fields_at_all_is_malformed(type_id):
    malformed(pack(type_id))


@pytest.mark.parametrize("head", [[1, b"\x11" * 32], [1, b"\x11" * 32, b"\x01", 0], "head", 5])
def test_a_head_summary_with_the_wrong_shape_is_malformed(head):
    malformed(pack(6, head))
    malformed(pack(1, *hello_fields(head=head)))


# --- field types ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "type_id, fields",
    [
        (4, ["1"]),  # text for an integer
        (4, [1.0]),  # float
        (4, [True]),  # bool
        (4, [None]),
        (4, [-1]),  # negative
        (5, [b"\x01"]),  # bytes for an integer
        (3, ["1", "bye"]),
        (3, [1, b"bye"]),  # bytes for text
        (3, [2**16 + 1, "bye"]),  # reason over its range
        (7, [1, 5]),  # int for bytes
        (7, [1, "payload"]),  # text for bytes
        (7, [256, b"p"]),  # topic over a byte
        (7, [1.5, b"p"]),
        (2, [b"\x55" * 63]),  # signature one byte short
        (2, ["\x55" * 64]),
        (8, [1, 2, 3.0]),
        (8, [1, -(2**63), 3]),  # negative int64
        (9, [1, [b"\x11" * 31]]),  # a hash one byte short
        (9, [1, b"\x11" * 32]),  # bytes instead of a list
        (9, [1, [5]]),
        (10, [1, ["block"]]),  # text where an encoded block goes
        (10, [1, b"block"]),
        (12, ["127.0.0.1:1"]),  # text instead of a list
        (12, [[b"127.0.0.1:1"]]),  # bytes for text
        (12, [[1]]),
        (6, [[1.0, b"\x11" * 32, b"\x01"]]),  # float height
        (6, [[1, b"\x11" * 32, 1]]),  # int score instead of bytes
        (6, [[1, "h" * 32, b"\x01"]]),
    ],
)
def test_a_field_of_the_wrong_type_or_range_is_malformed(type_id, fields):
    malformed(pack(type_id, *fields))


@pytest.mark.parametrize(
    "change",
    [
        dict(protocol_version="1"),
        dict(protocol_version=2**16 + 1),
        dict(protocol_version=1.0),
        dict(chain_id=b"chainlab"),
        dict(chain_id=7),
        dict(genesis_hash=b"\x22" * 31),
        dict(genesis_hash="\x22" * 32),
        dict(public_key=b"\x33" * 33),
        dict(listen_address=None),
        dict(challenge=b"\x44" * 31),
        dict(challenge=b"\x44" * 33),
        dict(challenge=12345),
    ],
)
def test_a_hello_with_a_wrong_field_is_malformed(change):
    malformed(pack(1, *hello_fields(**change)))


def test_ext_types_are_malformed_wherever_they_appear():
    timestamp = b"\xd6\xff\x00\x00\x00\x00"  # msgpack ext -1 (timestamp) of 4 bytes
    other_ext = b"\xd4\x05\x00"  # fixext1, type 5
    malformed(b"\x92\x04" + timestamp)  # ping(nonce=<ext>)
    malformed(b"\x92\x04" + other_ext)
    malformed(b"\x93\x07\x01" + timestamp)  # gossip payload
    malformed(timestamp)


# --- sizes -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        pack(9, 1, [b"\x11" * 32] * (LIST_ITEMS_MAX + 1)),
        pack(10, 1, [b"b"] * (LIST_ITEMS_MAX + 1)),
        pack(12, ["a"] * (LIST_ITEMS_MAX + 1)),
        pack(1, *hello_fields(chain_id="c" * (CHAIN_ID_CHARS_MAX + 1))),
        pack(1, *hello_fields(listen_address="a" * (LISTEN_ADDRESS_CHARS_MAX + 1))),
        pack(3, 1, "t" * (GOODBYE_TEXT_CHARS_MAX + 1)),
        pack(12, ["a" * (LISTEN_ADDRESS_CHARS_MAX + 1)]),
        pack(6, head_wire(b"\x01" * (SCORE_BYTES_MAX + 1))),
    ],
    ids=["hashes", "blocks", "peers", "chain_id", "listen_address", "goodbye_text", "peer_address", "score"],
)
def test_lists_and_strings_over_their_limits_are_malformed(body):
    assert "over the limit" in str(malformed(body))


def test_lists_and_strings_at_their_limits_decode():
    assert len(decode_message(pack(9, 1, [b"\x11" * 32] * LIST_ITEMS_MAX)).hashes) == LIST_ITEMS_MAX
    assert len(decode_message(pack(12, ["a"] * LIST_ITEMS_MAX)).addresses) == LIST_ITEMS_MAX
    assert decode_message(pack(3, 1, "t" * GOODBYE_TEXT_CHARS_MAX)).text == "t" * GOODBYE_TEXT_CHARS_MAX
    # Limits count characters, not UTF-8 bytes.
    assert decode_message(pack(3, 1, "é" * GOODBYE_TEXT_CHARS_MAX)).text == "é" * GOODBYE_TEXT_CHARS_MAX


@pytest.mark.parametrize("score", [b"", b"\x00\x01", b"\x00\x00", b"\x00" + b"\xff" * 10])
def test_non_minimal_score_bytes_are_malformed(score):
    assert "minimal" in str(malformed(pack(6, head_wire(score))))
    malformed(pack(1, *hello_fields(head=head_wire(score))))


def test_a_zero_score_is_the_single_byte_zero():
    assert decode_message(pack(6, head_wire(b"\x00"))).head.score == 0


# --- canonical msgpack -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b"\x92\x04\xcc\x01",  # ping nonce 1 as uint8 instead of a positive fixint
        b"\x92\x04\xcf" + (1).to_bytes(8, "big"),  # ... as uint64
        b"\x92\xcc\x04\x01",  # type id as uint8
        b"\xdc\x00\x02\x04\x01",  # array16 holding two items
        b"\xdd\x00\x00\x00\x02\x04\x01",  # array32
        b"\x93\x03\x01\xd9\x03bye",  # goodbye text as str8 instead of fixstr
        b"\x93\x07\x01\xc5\x00\x01p",  # gossip payload as bin16 instead of bin8
        b"\x93\x03\x01\xc4\x03bye",  # text sent as bin (raw=False keeps it bytes)
        b"\x92\x04\x01\x00",  # a trailing byte
        b"\x92\x04",  # a missing field byte
        b"\x92\x04\xd0\x01",  # int8 for a positive number
    ],
)
def test_non_canonical_msgpack_is_malformed(body):
    malformed(body)


def test_invalid_utf8_text_is_malformed():
    malformed(b"\x93\x03\x01\xa2\xff\xfe")


def test_a_map_with_duplicate_keys_is_malformed():
    malformed(b"\x82\xa1a\x01\xa1a\x02")


def test_deep_nesting_is_malformed_not_a_crash():
    malformed(b"\x91" * 100_000 + b"\x01")


# --- anything at all -------------------------------------------------------------------------


def _only_malformed(body: bytes) -> None:
    try:
        decode_message(body)
    except MalformedMessage:
        pass


@settings(max_examples=500, deadline=None)
@given(body=st.binary(max_size=200))
def test_arbitrary_bytes_raise_only_malformed_message(body):
    _only_malformed(body)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(msg=messages, data=st.data())
def test_mutated_valid_messages_raise_only_malformed_message(msg, data):
    body = bytearray(encode_message(msg))
    for _ in range(data.draw(st.integers(min_value=1, max_value=4))):
        action = data.draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        i = data.draw(st.integers(min_value=0, max_value=max(0, len(body) - 1)))
        if action == "flip" and body:
            body[i] ^= data.draw(st.integers(min_value=1, max_value=255))
        elif action == "insert":
            body.insert(i, data.draw(st.integers(min_value=0, max_value=255)))
        elif action == "delete" and body:
            del body[i]
        else:
            del body[i:]
    _only_malformed(bytes(body))


msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**64 - 1) | st.floats(allow_nan=False)
    | st.binary(max_size=40) | text(40),
    lambda children: st.lists(children, max_size=8) | st.dictionaries(text(5), children, max_size=3),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(type_id=st.integers(min_value=0, max_value=14), fields=st.lists(msgpack_values, max_size=8))
def test_arbitrary_well_formed_msgpack_raises_only_malformed_message(type_id, fields):
    # Real msgpack with a plausible type id reaches the per-field readers, which random
    # bytes rarely do.
    _only_malformed(pack(type_id, *fields))
