"""Frozen, typed consensus values and their one canonical encoding.

Each value is a NamedTuple: immutable, typed, cheap to build, and packed by msgpack
as an array in field order, which is exactly the canonical form. `decode_*` checks
every field's type and size and goes through `codec.decode`, which rejects any bytes
that do not re-encode identically.
"""

import functools
from typing import Annotated, Any, NamedTuple

import msgspec

from consensus import codec
from consensus.codec import read_bytes, read_list, read_str, read_uint
from consensus.crypto import (
    ADDRESS_BYTES,
    HASH_BYTES,
    PUBLIC_KEY_BYTES,
    SIGNATURE_BYTES,
    address_of,
    sha256,
)
from consensus.errors import DecodeError

# Transaction kinds. Staking kinds are reserved for the proof-of-stake engine; the
# codec accepts them so that engines can add rules without a new encoding.
TX_TRANSFER = 0
TX_STAKE = 1
TX_UNSTAKE = 2
TX_KINDS = (TX_TRANSFER, TX_STAKE, TX_UNSTAKE)

CHAIN_ID_CHARS_MAX = 64  # a human-readable name, not a payload
BLOCK_VERSION = 1
NONCE_BYTES = 8  # fixed width, so the header's last 8 bytes are the nonce (midstate)

# One block carries at most this many transactions; together with the frame limit it
# bounds what a peer can make us decode and apply.
BLOCK_TRANSACTIONS_MAX = 4096
# The engine's part of a block (proof of stake: votes, slashing evidence, the proposer's
# reveal; proof of work: nothing) and the producer's seal (a proposer's signature).
# 1 MiB holds a slot's votes of thousands of validators; a seal is one signature.
CONSENSUS_BYTES_MAX = 1024 * 1024
SEAL_BYTES_MAX = 128


# Field types with their bounds. msgspec checks them while it decodes (the fast path
# below); the readers in `_read_*` check the same bounds and word the error messages.
U64 = Annotated[int, msgspec.Meta(ge=0)]  # msgpack itself carries no integer above 2**64 - 1
U32 = Annotated[int, msgspec.Meta(ge=0, le=2**32 - 1)]
Kind = Annotated[int, msgspec.Meta(ge=min(TX_KINDS), le=max(TX_KINDS))]
ChainId = Annotated[str, msgspec.Meta(max_length=CHAIN_ID_CHARS_MAX)]
Hash = Annotated[bytes, msgspec.Meta(min_length=HASH_BYTES, max_length=HASH_BYTES)]
PublicKey = Annotated[bytes, msgspec.Meta(min_length=PUBLIC_KEY_BYTES, max_length=PUBLIC_KEY_BYTES)]
Address = Annotated[bytes, msgspec.Meta(min_length=ADDRESS_BYTES, max_length=ADDRESS_BYTES)]
Signature = Annotated[bytes, msgspec.Meta(min_length=SIGNATURE_BYTES, max_length=SIGNATURE_BYTES)]
Nonce8 = Annotated[bytes, msgspec.Meta(min_length=NONCE_BYTES, max_length=NONCE_BYTES)]
ConsensusBytes = Annotated[bytes, msgspec.Meta(max_length=CONSENSUS_BYTES_MAX)]
SealBytes = Annotated[bytes, msgspec.Meta(max_length=SEAL_BYTES_MAX)]


class Transaction(NamedTuple):
    kind: Kind
    chain_id: ChainId
    sender: PublicKey  # Ed25519 public key of the paying account
    recipient: Address
    amount: U64
    fee: U64
    nonce: U64  # the sender's account nonce this transaction consumes
    signature: Signature

    def signing_bytes(self) -> bytes:
        """What the sender signs: every field but the signature, under a domain tag."""
        return codec.encode(("chainlab/tx/v1",) + tuple(self[:7]))

    def encode(self) -> bytes:
        return _ENCODER.encode(self)

    @property
    def txid(self) -> bytes:
        """sha256 of the canonical bytes, signature included."""
        return _txid(self)

    @property
    def sender_address(self) -> bytes:
        return _address(self.sender)


# A transaction's id and sender address are asked for a dozen times on its way through
# a node (mempool, gossip, template, block, indexes); a NamedTuple has no slot to keep
# them, so they are memoised by value. Hashing a transaction is cheap (bytes objects
# cache their hash) and equal transactions have equal ids, so a hit is always right.
@functools.lru_cache(maxsize=1 << 16)
def _txid(tx: "Transaction") -> bytes:
    return sha256(_ENCODER.encode(tx))


@functools.lru_cache(maxsize=1 << 14)
def _address(public_key: bytes) -> bytes:
    return address_of(public_key)


class BlockHeader(NamedTuple):
    version: U32
    height: U64
    parent: Hash
    timestamp_ms: U64
    tx_root: Hash
    state_root: Hash
    producer: Address  # address credited with the reward and the fees
    bits: U32  # compact target (proof of work); 0 where an engine has none
    consensus_root: Hash  # commits to Block.consensus (consensus_root_of)
    nonce: Nonce8  # last, fixed width: the miner's midstate covers everything before it

    def encode(self) -> bytes:
        return _ENCODER.encode(self)

    @property
    def hash(self) -> bytes:
        return sha256(self.encode())


class Block(NamedTuple):
    header: BlockHeader
    transactions: Annotated[tuple[Transaction, ...], msgspec.Meta(max_length=BLOCK_TRANSACTIONS_MAX)]
    consensus: ConsensusBytes = b""  # the engine's body, committed by header.consensus_root
    seal: SealBytes = b""  # the producer's signature over the header hash where the engine wants one

    def encode(self) -> bytes:
        return _ENCODER.encode(self)

    @property
    def hash(self) -> bytes:
        return self.header.hash


def _read_transaction(value: Any, what: str) -> Transaction:
    f = read_list(value, what, 8)
    kind = read_uint(f[0], f"{what}.kind", 255)
    if kind not in TX_KINDS:
        raise DecodeError(f"{what}.kind: unknown transaction kind {kind}")
    return Transaction(
        kind,
        read_str(f[1], f"{what}.chain_id", CHAIN_ID_CHARS_MAX),
        read_bytes(f[2], f"{what}.sender", PUBLIC_KEY_BYTES),
        read_bytes(f[3], f"{what}.recipient", ADDRESS_BYTES),
        read_uint(f[4], f"{what}.amount"),
        read_uint(f[5], f"{what}.fee"),
        read_uint(f[6], f"{what}.nonce"),
        read_bytes(f[7], f"{what}.signature", SIGNATURE_BYTES),
    )


def _read_header(value: Any, what: str) -> BlockHeader:
    f = read_list(value, what, 10)
    return BlockHeader(
        read_uint(f[0], f"{what}.version", 2**32 - 1),
        read_uint(f[1], f"{what}.height"),
        read_bytes(f[2], f"{what}.parent", HASH_BYTES),
        read_uint(f[3], f"{what}.timestamp_ms"),
        read_bytes(f[4], f"{what}.tx_root", HASH_BYTES),
        read_bytes(f[5], f"{what}.state_root", HASH_BYTES),
        read_bytes(f[6], f"{what}.producer", ADDRESS_BYTES),
        read_uint(f[7], f"{what}.bits", 2**32 - 1),
        read_bytes(f[8], f"{what}.consensus_root", HASH_BYTES),
        read_bytes(f[9], f"{what}.nonce", NONCE_BYTES),
    )


def read_block(value: Any, what: str = "block") -> Block:
    f = read_list(value, what, 4)
    header = _read_header(f[0], f"{what}.header")
    txs = read_list(f[1], f"{what}.transactions", length_max=BLOCK_TRANSACTIONS_MAX)
    return Block(header, tuple(_read_transaction(t, f"{what}.transactions[{i}]") for i, t in enumerate(txs)),
                 read_bytes(f[2], f"{what}.consensus", length_max=CONSENSUS_BYTES_MAX),
                 read_bytes(f[3], f"{what}.seal", length_max=SEAL_BYTES_MAX))


# The fast path: msgspec decodes straight into the typed values and checks every bound
# in C, and re-encodes to confirm the bytes were canonical. Added because the readers
# alone ran a 1,000-transaction block at a fifth of raw msgpack speed. Anything it
# refuses goes through the readers, which raise the DecodeError with a clear message.
_ENCODER = msgspec.msgpack.Encoder()
_DECODERS: dict[type, msgspec.msgpack.Decoder] = {
    t: msgspec.msgpack.Decoder(t) for t in (Transaction, BlockHeader, Block)
}


def _decode_fast(data: bytes, kind: type) -> Any:
    if isinstance(data, (bytes, bytearray, memoryview)) and len(data) <= codec.DECODE_BYTES_MAX:
        try:
            value = _DECODERS[kind].decode(data)
        except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError, RecursionError):
            return None  # the readers below say what is wrong
        if _ENCODER.encode(value) == bytes(data):
            return value
    return None


def decode_transaction(data: bytes) -> Transaction:
    return _decode_fast(data, Transaction) or _read_transaction(codec.decode(data), "transaction")


def decode_header(data: bytes) -> BlockHeader:
    return _decode_fast(data, BlockHeader) or _read_header(codec.decode(data), "header")


def decode_block(data: bytes) -> Block:
    return _decode_fast(data, Block) or read_block(codec.decode(data))


def merkle_root(leaves: list[bytes]) -> bytes:
    """Merkle root with leaf and node domain tags (RFC 6962 style).

    The tags and promoting an odd last node (instead of Bitcoin's duplication) rule out
    two different lists with one root (CVE-2012-2459).
    """
    if not leaves:
        return sha256(b"\x02")
    level = [sha256(b"\x00" + leaf) for leaf in leaves]
    while len(level) > 1:
        nxt = [sha256(b"\x01" + level[i] + level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0]


def consensus_root_of(consensus: bytes) -> bytes:
    return sha256(b"chainlab/consensus" + consensus)


EMPTY_CONSENSUS_ROOT = consensus_root_of(b"")


def compute_tx_root(transactions: tuple[Transaction, ...] | list[Transaction]) -> bytes:
    return merkle_root([tx.txid for tx in transactions])
