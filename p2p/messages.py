"""Wire messages: each a NamedTuple, encoded canonically as [type, fields...].

Every field is checked for type and size on decode; anything else is a
MalformedMessage, which closes the connection.
"""

from typing import Any, NamedTuple

from consensus import codec
from consensus.codec import read_bytes, read_list, read_str, read_uint
from consensus.crypto import HASH_BYTES, PUBLIC_KEY_BYTES, SIGNATURE_BYTES
from consensus.errors import DecodeError
from consensus.types import CHAIN_ID_CHARS_MAX
from p2p.errors import MalformedMessage

LISTEN_ADDRESS_CHARS_MAX = 128
GOODBYE_TEXT_CHARS_MAX = 256
SCORE_BYTES_MAX = 40  # cumulative scores are big integers, sent as big-endian bytes
LIST_ITEMS_MAX = 4096  # any list in a message; tighter limits are checked by the node


class Topic:
    TRANSACTIONS = 1
    BLOCKS = 2
    VOTES = 3  # reserved for proof of stake
    EVIDENCE = 4  # reserved for proof of stake
    ALL = (1, 2, 3, 4)


class HeadSummary(NamedTuple):
    height: int
    hash: bytes
    score: int  # cumulative score (work for proof of work)

    def to_wire(self) -> list:
        return [self.height, self.hash, self.score.to_bytes((self.score.bit_length() + 7) // 8 or 1, "big")]


class Hello(NamedTuple):
    protocol_version: int
    chain_id: str
    genesis_hash: bytes
    public_key: bytes
    listen_address: str  # where this node accepts connections, "" if it does not
    head: HeadSummary
    challenge: bytes  # random bytes the other side must sign


class HelloProof(NamedTuple):
    signature: bytes  # over the other side's challenge (see p2p.connection)


class Goodbye(NamedTuple):
    reason: int
    text: str


class Ping(NamedTuple):
    nonce: int


class Pong(NamedTuple):
    nonce: int


class Status(NamedTuple):
    head: HeadSummary


class Gossip(NamedTuple):
    topic: int
    payload: bytes


class GossipBatch(NamedTuple):
    """Several gossip messages of one topic in one frame (as eth's Transactions message
    carries many): each payload is deduplicated, validated and forwarded on its own;
    batching only saves a frame, an envelope and a decode per message."""

    topic: int
    payloads: tuple[bytes, ...]


class GetBlocksByRange(NamedTuple):
    request_id: int
    start_height: int
    count: int


class GetBlocksByHash(NamedTuple):
    request_id: int
    hashes: tuple[bytes, ...]


class Blocks(NamedTuple):
    request_id: int
    blocks: tuple[bytes, ...]  # canonical block encodings, decoded one by one


class GetPeers(NamedTuple):
    pass


class Peers(NamedTuple):
    addresses: tuple[str, ...]


Message = (
    Hello | HelloProof | Goodbye | Ping | Pong | Status | Gossip | GetBlocksByRange
    | GetBlocksByHash | Blocks | GetPeers | Peers | GossipBatch
)

TYPE_IDS: dict[type, int] = {
    Hello: 1, HelloProof: 2, Goodbye: 3, Ping: 4, Pong: 5, Status: 6, Gossip: 7,
    GetBlocksByRange: 8, GetBlocksByHash: 9, Blocks: 10, GetPeers: 11, Peers: 12, GossipBatch: 13,
}


def encode_message(msg: Message) -> bytes:
    type_id = TYPE_IDS[type(msg)]
    fields = [f.to_wire() if isinstance(f, HeadSummary) else f for f in msg]
    return codec.encode([type_id, *fields])


def _head(value: Any) -> HeadSummary:
    f = read_list(value, "head", 3)
    score = read_bytes(f[2], "head.score", length_max=SCORE_BYTES_MAX)
    if len(score) == 0 or (len(score) > 1 and score[0] == 0):
        raise DecodeError("head.score: not minimal big-endian bytes")
    return HeadSummary(read_uint(f[0], "head.height"), read_bytes(f[1], "head.hash", HASH_BYTES), int.from_bytes(score, "big"))


def _hello(f: list) -> Hello:
    read_list(f, "hello", 7)
    return Hello(
        read_uint(f[0], "hello.protocol_version", 2**16),
        read_str(f[1], "hello.chain_id", CHAIN_ID_CHARS_MAX),
        read_bytes(f[2], "hello.genesis_hash", HASH_BYTES),
        read_bytes(f[3], "hello.public_key", PUBLIC_KEY_BYTES),
        read_str(f[4], "hello.listen_address", LISTEN_ADDRESS_CHARS_MAX),
        _head(f[5]),
        read_bytes(f[6], "hello.challenge", 32),
    )


def _fields(n: int):
    def check(f: list, what: str) -> list:
        return read_list(f, what, n)

    return check


_DECODERS = {
    1: _hello,
    2: lambda f: HelloProof(read_bytes(_fields(1)(f, "proof")[0], "proof.signature", SIGNATURE_BYTES)),
    3: lambda f: Goodbye(read_uint(_fields(2)(f, "goodbye")[0], "goodbye.reason", 2**16), read_str(f[1], "goodbye.text", GOODBYE_TEXT_CHARS_MAX)),
    4: lambda f: Ping(read_uint(_fields(1)(f, "ping")[0], "ping.nonce")),
    5: lambda f: Pong(read_uint(_fields(1)(f, "pong")[0], "pong.nonce")),
    6: lambda f: Status(_head(_fields(1)(f, "status")[0])),
    7: lambda f: Gossip(read_uint(_fields(2)(f, "gossip")[0], "gossip.topic", 255), read_bytes(f[1], "gossip.payload")),
    8: lambda f: GetBlocksByRange(
        read_uint(_fields(3)(f, "get_blocks_by_range")[0], "request_id"), read_uint(f[1], "start_height"), read_uint(f[2], "count")
    ),
    9: lambda f: GetBlocksByHash(
        read_uint(_fields(2)(f, "get_blocks_by_hash")[0], "request_id"),
        tuple(read_bytes(h, "hash", HASH_BYTES) for h in read_list(f[1], "hashes", length_max=LIST_ITEMS_MAX)),
    ),
    10: lambda f: Blocks(
        read_uint(_fields(2)(f, "blocks")[0], "request_id"),
        tuple(read_bytes(b, "block") for b in read_list(f[1], "blocks", length_max=LIST_ITEMS_MAX)),
    ),
    11: lambda f: (_fields(0)(f, "get_peers"), GetPeers())[1],
    12: lambda f: Peers(
        tuple(read_str(a, "address", LISTEN_ADDRESS_CHARS_MAX) for a in read_list(_fields(1)(f, "peers")[0], "addresses", length_max=LIST_ITEMS_MAX))
    ),
    13: lambda f: GossipBatch(
        read_uint(_fields(2)(f, "gossip_batch")[0], "gossip_batch.topic", 255),
        tuple(read_bytes(p, "gossip_batch.payload") for p in read_list(f[1], "gossip_batch.payloads", length_max=LIST_ITEMS_MAX)),
    ),
}


def decode_message(data: bytes) -> Message:
    """Decode one frame body. Raises MalformedMessage with what was wrong."""
    try:
        value = codec.decode(data)
        items = read_list(value, "message")
        if not items:
            raise DecodeError("empty message")
        type_id = read_uint(items[0], "message type", 255)
        decoder = _DECODERS.get(type_id)
        if decoder is None:
            raise DecodeError(f"unknown message type {type_id}")
        return decoder(items[1:])
    except DecodeError as exc:
        raise MalformedMessage(str(exc)) from None
