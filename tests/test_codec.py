"""The canonical codec (DESIGN.md section 4): one encoding per object, and nothing
but DecodeError for bad input.

How: hypothesis builds valid Transactions, BlockHeaders and Blocks and checks that
decode(encode(x)) == x and that the bytes re-encode identically. Hand-built msgpack
byte strings then take a valid encoding apart one field at a time (non-minimal ints,
str/bin swaps, floats, bools, nil, ext types, maps, wrong arity, oversized fields,
trailing and missing bytes) and each must raise DecodeError. Finally arbitrary bytes
and mutated valid encodings are fed to every decoder: only DecodeError may escape.
"""

import struct

import msgpack
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from consensus import codec
from consensus.errors import DecodeError
from consensus.types import (
    BLOCK_TRANSACTIONS_MAX,
    CHAIN_ID_CHARS_MAX,
    CONSENSUS_BYTES_MAX,
    SEAL_BYTES_MAX,
    TX_KINDS,
    Block,
    BlockHeader,
    Transaction,
    decode_block,
    decode_header,
    decode_transaction,
)

U64 = 2**64 - 1
U32 = 2**32 - 1

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --- strategies ------------------------------------------------------------------

uint64 = st.one_of(
    st.integers(0, 300),  # fixint / uint8 / uint16 boundaries
    st.sampled_from([127, 128, 255, 256, 65535, 65536, U32, U32 + 1, U64]),
    st.integers(0, U64),
)
transactions = st.builds(
    Transaction,
    kind=st.sampled_from(TX_KINDS),
    chain_id=st.text(max_size=CHAIN_ID_CHARS_MAX),
    sender=st.binary(min_size=32, max_size=32),
    recipient=st.binary(min_size=20, max_size=20),
    amount=uint64,
    fee=uint64,
    nonce=uint64,
    signature=st.binary(min_size=64, max_size=64),
)
headers = st.builds(
    BlockHeader,
    version=st.integers(0, U32),
    height=uint64,
    parent=st.binary(min_size=32, max_size=32),
    timestamp_ms=uint64,
    tx_root=st.binary(min_size=32, max_size=32),
    state_root=st.binary(min_size=32, max_size=32),
    producer=st.binary(min_size=20, max_size=20),
    bits=st.integers(0, U32),
    consensus_root=st.binary(min_size=32, max_size=32),
    nonce=st.binary(min_size=8, max_size=8),
)
blocks = st.builds(Block, header=headers, transactions=st.lists(transactions, max_size=5).map(tuple),
                   consensus=st.binary(max_size=200), seal=st.binary(max_size=128))

TX = Transaction(0, "chainlab-test", b"\x11" * 32, b"\x22" * 20, 5, 300, 7, b"\x33" * 64)
HEADER = BlockHeader(1, 5, b"\x44" * 32, 1_700_000_000_000, b"\x55" * 32, b"\x66" * 32, b"\x77" * 20, 0x2000FFFF, b"\x99" * 32, b"\x88" * 8)
BLOCK = Block(HEADER, (TX, TX._replace(nonce=8)))


# --- raw msgpack building blocks, to write exactly the bytes a test needs ------------

def p(value) -> bytes:
    """Canonical msgpack of one value."""
    return msgpack.packb(value, use_bin_type=True)


def array(*items: bytes) -> bytes:
    assert len(items) < 16
    return bytes([0x90 | len(items)]) + b"".join(items)


def tx_fields(tx: Transaction = TX) -> list[bytes]:
    return [p(f) for f in tx]


def header_fields(header: BlockHeader = HEADER) -> list[bytes]:
    return [p(f) for f in header]


def tx_with(index: int, raw: bytes) -> bytes:
    fields = tx_fields()
    fields[index] = raw
    return array(*fields)


def header_with(index: int, raw: bytes) -> bytes:
    fields = header_fields()
    fields[index] = raw
    return array(*fields)


# --- round trips -------------------------------------------------------------------

@SETTINGS
@given(transactions)
def test_transaction_round_trip(tx):
    data = tx.encode()
    decoded = decode_transaction(data)
    assert decoded == tx
    assert type(decoded) is Transaction
    assert decoded.encode() == data
    assert decoded.txid == tx.txid


@SETTINGS
@given(headers)
def test_header_round_trip(header):
    data = header.encode()
    decoded = decode_header(data)
    assert decoded == header
    assert decoded.encode() == data
    assert decoded.hash == header.hash


@SETTINGS
@given(blocks)
def test_block_round_trip(block):
    data = block.encode()
    decoded = decode_block(data)
    assert decoded == block
    assert isinstance(decoded.transactions, tuple)
    assert all(type(t) is Transaction for t in decoded.transactions)
    assert decoded.encode() == data


def test_canonical_encoding_is_an_array_in_field_order():
    # The header's bytes are exactly the concatenated fields behind a 9-element array,
    # and the nonce is the last 8 bytes (what the miner's midstate relies on).
    assert HEADER.encode() == array(*header_fields())
    assert HEADER.encode()[-8:] == HEADER.nonce
    assert TX.encode() == array(*tx_fields())


def test_the_empty_block_round_trips():
    block = Block(HEADER, ())
    assert decode_block(block.encode()) == block


def test_exactly_the_transaction_limit_is_accepted():
    block = Block(HEADER, (TX,) * BLOCK_TRANSACTIONS_MAX)
    assert len(decode_block(block.encode()).transactions) == BLOCK_TRANSACTIONS_MAX


# --- non-canonical encodings of valid values ----------------------------------------

NON_CANONICAL_TX = {
    # kind 0 fits a positive fixint; each wider form must be refused.
    "uint8 where a fixint suffices": tx_with(0, b"\xcc\x00"),
    "uint16 where a fixint suffices": tx_with(0, b"\xcd\x00\x00"),
    "int8 for a positive value": tx_with(0, b"\xd0\x00"),
    "uint8 amount 5": tx_with(4, b"\xcc\x05"),
    "uint32 where uint16 suffices": tx_with(5, b"\xce\x00\x00\x01\x2c"),  # fee 300
    "uint64 where uint8 suffices": tx_with(6, b"\xcf" + (7).to_bytes(8, "big")),  # nonce 7
    "str8 for a short string": tx_with(1, b"\xd9\x0d" + b"chainlab-test"),
    "bin16 for 32 bytes": tx_with(2, b"\xc5\x00\x20" + b"\x11" * 32),
    "array16 header": b"\xdc\x00\x08" + b"".join(tx_fields()),
    "float32 amount": tx_with(4, b"\xca" + struct.pack(">f", 5.0)),
}


@pytest.mark.parametrize("data", NON_CANONICAL_TX.values(), ids=NON_CANONICAL_TX.keys())
def test_non_canonical_transaction_bytes_are_refused(data):
    # Each variant decodes to the same (or a looser) value in a lenient decoder.
    assert msgpack.unpackb(data, raw=False) is not None
    with pytest.raises(DecodeError):
        decode_transaction(data)


def test_non_minimal_integer_message_names_canonical_form():
    with pytest.raises(DecodeError, match="non-canonical"):
        decode_transaction(tx_with(4, b"\xcc\x05"))


def test_the_canonical_control_decodes():
    # The raw builder itself is right: the unmodified fields decode.
    assert decode_transaction(array(*tx_fields())) == TX
    assert decode_header(array(*header_fields())) == HEADER


# --- wrong types, arity, sizes -------------------------------------------------------


WRONG_TX = {
    "bin where str belongs": (tx_with(1, p(b"chainlab-test")), "chain_id: expected text"),
    "str where bin belongs": (tx_with(2, p("x" * 32)), "sender: expected bytes"),
    "float64 where an int belongs": (tx_with(4, p(5.0)), "amount: expected an unsigned integer"),
    "true where an int belongs": (tx_with(4, b"\xc3"), "amount: expected an unsigned integer"),
    "false as the kind": (tx_with(0, b"\xc2"), "kind: expected an unsigned integer"),
    "nil where an int belongs": (tx_with(6, b"\xc0"), "nonce: expected an unsigned integer"),
    "negative amount": (tx_with(4, p(-1)), "amount: -1 is outside"),
    "unknown kind": (tx_with(0, p(3)), "unknown transaction kind"),
    "kind over 255": (tx_with(0, p(256)), "kind: 256 is outside"),
    "extra field": (array(*tx_fields(), p(0)), "expected 8 fields, got 9"),
    "missing field": (array(*tx_fields()[:7]), "expected 8 fields, got 7"),
    "chain id too long": (tx_with(1, p("c" * (CHAIN_ID_CHARS_MAX + 1))), "over the limit"),
    "sender 33 bytes": (tx_with(2, p(b"\x11" * 33)), "sender: expected 32 bytes"),
    "sender 31 bytes": (tx_with(2, p(b"\x11" * 31)), "sender: expected 32 bytes"),
    "recipient 21 bytes": (tx_with(3, p(b"\x22" * 21)), "recipient: expected 20 bytes"),
    "signature 65 bytes": (tx_with(7, p(b"\x33" * 65)), "signature: expected 64 bytes"),
    "a map instead of the array": (p({"kind": 0}), "expected an array"),
    "a nested array as a field": (tx_with(3, array(p(1))), "recipient: expected bytes"),
    "a string-keyed map as a field": (tx_with(3, p({"a": 1})), "recipient: expected bytes"),
}


@pytest.mark.parametrize("data,message", WRONG_TX.values(), ids=WRONG_TX.keys())
def test_wrong_transaction_fields_are_refused(data, message):
    with pytest.raises(DecodeError, match=message):
        decode_transaction(data)


WRONG_HEADER = {
    "version over 32 bits": (header_with(0, p(U32 + 1)), "version"),
    "bits over 32 bits": (header_with(7, p(U32 + 1)), "bits"),
    "nonce 9 bytes": (header_with(9, p(b"\x88" * 9)), "nonce: expected 8 bytes"),
    "nonce 7 bytes": (header_with(9, p(b"\x88" * 7)), "nonce: expected 8 bytes"),
    "consensus_root 31 bytes": (header_with(8, p(b"\x99" * 31)), "consensus_root: expected 32 bytes"),
    "parent 31 bytes": (header_with(2, p(b"\x44" * 31)), "parent: expected 32 bytes"),
    "producer 32 bytes": (header_with(6, p(b"\x77" * 32)), "producer: expected 20 bytes"),
    "height as bool": (header_with(1, b"\xc3"), "height: expected an unsigned integer"),
    "timestamp as float": (header_with(3, p(1.5)), "timestamp_ms: expected an unsigned integer"),
    "tx_root as text": (header_with(4, p("x" * 32)), "tx_root: expected bytes"),
    "negative height": (header_with(1, p(-5)), "height: -5 is outside"),
    "11 fields": (array(*header_fields(), p(0)), "expected 10 fields, got 11"),
    "9 fields": (array(*header_fields()[:9]), "expected 10 fields, got 9"),
}


@pytest.mark.parametrize("data,message", WRONG_HEADER.values(), ids=WRONG_HEADER.keys())
def test_wrong_header_fields_are_refused(data, message):
    with pytest.raises(DecodeError, match=message):
        decode_header(data)
    # Inside a block the same header fails the same way.
    with pytest.raises(DecodeError, match=message):
        decode_block(array(data, array(), p(b""), p(b"")))


@pytest.mark.parametrize("consensus, seal, message", [
    (b"c" * (CONSENSUS_BYTES_MAX + 1), b"", "consensus: 1048577 bytes is over the limit"),
    (b"", b"s" * (SEAL_BYTES_MAX + 1), "seal: 129 bytes is over the limit"),
])
def test_oversized_consensus_body_or_seal_is_refused(consensus, seal, message):
    with pytest.raises(DecodeError, match=message):
        decode_block(array(HEADER.encode(), array(), p(consensus), p(seal)))


def test_a_block_without_its_consensus_and_seal_fields_is_refused():
    with pytest.raises(DecodeError, match="expected 4 fields, got 2"):
        decode_block(array(HEADER.encode(), array()))


def test_too_many_transactions_are_refused():
    data = Block(HEADER, (TX,) * (BLOCK_TRANSACTIONS_MAX + 1)).encode()
    with pytest.raises(DecodeError, match="over the limit of 4096"):
        decode_block(data)


def test_a_bad_transaction_inside_a_block_is_named():
    bad_tx = tx_with(4, p(-1))
    data = array(HEADER.encode(), array(TX.encode(), bad_tx), p(b""), p(b""))
    with pytest.raises(DecodeError, match=r"block.transactions\[1\].amount"):
        decode_block(data)


def test_block_with_five_parts_or_a_non_list_body_is_refused():
    with pytest.raises(DecodeError, match="expected 4 fields"):
        decode_block(array(HEADER.encode(), array(), p(b""), p(b""), array()))
    with pytest.raises(DecodeError, match="transactions: expected an array"):
        decode_block(array(HEADER.encode(), p(b""), p(b""), p(b"")))


# --- malformed msgpack -------------------------------------------------------------

def test_trailing_bytes_are_refused():
    for good in (TX.encode(), HEADER.encode(), BLOCK.encode()):
        for extra in (b"\x00", b"\xc0", good):
            with pytest.raises(DecodeError):
                codec.decode(good + extra)
    with pytest.raises(DecodeError):
        decode_block(BLOCK.encode() + b"\x00")


def test_every_truncation_is_refused():
    data = BLOCK.encode()
    for end in range(len(data)):
        with pytest.raises(DecodeError):
            decode_block(data[:end])
    for end in range(len(TX.encode())):
        with pytest.raises(DecodeError):
            decode_transaction(TX.encode()[:end])


@pytest.mark.parametrize("raw", [
    b"\xd4\x05\x00",  # fixext1, application type 5
    b"\xc7\x01\x05\x00",  # ext8
    b"\xd8\x01" + b"\x00" * 16,  # fixext16
])
def test_ext_types_are_refused(raw):
    with pytest.raises(DecodeError, match="ext type"):
        codec.decode(raw)
    with pytest.raises(DecodeError):
        decode_transaction(tx_with(4, raw))


def test_timestamp_ext_inside_a_typed_object_is_refused():
    # msgpack decodes ext -1 itself (no ext_hook call); the typed readers still refuse it.
    ts = msgpack.packb(msgpack.Timestamp(5, 0))
    with pytest.raises(DecodeError):
        decode_transaction(tx_with(4, ts))
    with pytest.raises(DecodeError):
        decode_header(header_with(3, ts))


def test_codec_decode_refuses_the_timestamp_ext_type():
    for ts in (msgpack.Timestamp(1, 0), msgpack.Timestamp(2**32, 5), msgpack.Timestamp(2**40, 5)):
        data = msgpack.packb([1, ts])
        with pytest.raises(DecodeError):
            codec.decode(data)


def test_maps_with_non_string_keys_are_refused():
    for raw in (b"\x81\x01\x02", b"\x81\xc0\x01", b"\x81\x91\x01\x01"):
        with pytest.raises(DecodeError, match="malformed"):
            codec.decode(raw)
        with pytest.raises(DecodeError):
            decode_transaction(tx_with(3, raw))


def test_duplicate_map_keys_are_refused():
    # {"a": 1, "a": 2} decodes to one key: the re-encoding differs from the input.
    with pytest.raises(DecodeError, match="non-canonical"):
        codec.decode(b"\x82\xa1a\x01\xa1a\x02")


def test_invalid_utf8_text_is_refused():
    with pytest.raises(DecodeError):
        decode_transaction(tx_with(1, b"\xa2\xff\xfe"))


def test_decode_refuses_non_bytes_and_oversized_input():
    with pytest.raises(DecodeError, match="expected bytes"):
        codec.decode("not bytes")  # type: ignore[arg-type]
    with pytest.raises(DecodeError, match="over the decode limit"):
        codec.decode(TX.encode(), bytes_max=10)
    assert codec.decode(TX.encode(), bytes_max=len(TX.encode())) == list(TX)


def test_deep_nesting_is_refused_not_a_crash():
    with pytest.raises(DecodeError):
        decode_block(b"\x91" * 100_000 + b"\x00")


# --- fuzz: only DecodeError escapes ------------------------------------------------

DECODERS = (decode_block, decode_transaction, decode_header)


def _only_decode_error(data: bytes) -> None:
    for decoder in DECODERS:
        try:
            decoder(data)
        except DecodeError:
            pass


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=400))
def test_arbitrary_bytes_raise_only_decode_error(data):
    _only_decode_error(data)


msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), U64) | st.floats(allow_nan=False)
    | st.binary(max_size=40) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=10) | st.dictionaries(st.text(max_size=5), children, max_size=4),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(msgpack_values)
def test_arbitrary_msgpack_values_raise_only_decode_error(value):
    _only_decode_error(msgpack.packb(value, use_bin_type=True))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(blocks, st.data())
def test_mutated_valid_encodings_raise_only_decode_error(block, data):
    encoded = bytearray(block.encode())
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "insert", "delete", "replace"]))
        pos = data.draw(st.integers(0, max(0, len(encoded) - 1)))
        if op == "flip" and encoded:
            encoded[pos] ^= 1 << data.draw(st.integers(0, 7))
        elif op == "insert":
            encoded[pos:pos] = data.draw(st.binary(min_size=1, max_size=4))
        elif op == "delete" and encoded:
            del encoded[pos: pos + data.draw(st.integers(1, 4))]
        else:
            encoded[pos: pos + 1] = bytes([data.draw(st.integers(0, 255))])
    mutated = bytes(encoded)
    try:
        decoded = decode_block(mutated)
    except DecodeError:
        return
    # Whatever still decodes must be canonical: its encoding is exactly the input.
    assert decoded.encode() == mutated
    _only_decode_error(mutated)


@SETTINGS
@given(transactions, st.sampled_from([0, 4, 5, 6]), st.sampled_from([0xCC, 0xCD, 0xCE, 0xCF]))
def test_every_wider_integer_form_is_refused(tx, index, marker):
    # Re-encode one integer field of a valid transaction in a form wider than minimal.
    value = tx[index]
    width = {0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8}[marker]
    assume(value < 2 ** (8 * width))
    raw = bytes([marker]) + value.to_bytes(width, "big")
    assume(raw != p(value))
    fields = [p(f) for f in tx]
    fields[index] = raw
    with pytest.raises(DecodeError, match="non-canonical"):
        decode_transaction(array(*fields))
