"""Genesis: the chain's id, its consensus engine and parameters, prefunded accounts.

The genesis hash (sha256 of the canonical genesis) is what peers compare in the
handshake, and the genesis block's parent, so every parameter is bound into the chain.
"""

import json
from typing import NamedTuple

from consensus import codec
from consensus.codec import read_bytes, read_list, read_str, read_uint
from consensus.crypto import ADDRESS_BYTES, PUBLIC_KEY_BYTES, sha256
from consensus.errors import DecodeError
from consensus.types import CHAIN_ID_CHARS_MAX

ALLOCATIONS_MAX = 100_000
VALIDATORS_MAX = 4_096
PARAMS_MAX = 64
PARAM_NAME_CHARS_MAX = 64


class Genesis(NamedTuple):
    chain_id: str
    consensus: str  # engine name: "pow" (and "pos" with the proof-of-stake engine)
    timestamp_ms: int
    params: tuple[tuple[str, int], ...]  # sorted by name
    allocations: tuple[tuple[bytes, int], ...]  # (address, balance), sorted by address
    # (Ed25519 public key, stake) of the validators active from the start, in registry
    # order (their index is their name); empty for proof of work.
    validators: tuple[tuple[bytes, int], ...] = ()

    @classmethod
    def create(cls, chain_id: str, consensus: str, timestamp_ms: int, params: dict[str, int],
               allocations: dict[bytes, int], validators: list[tuple[bytes, int]] | None = None) -> "Genesis":
        genesis = cls(
            chain_id,
            consensus,
            timestamp_ms,
            tuple(sorted(params.items())),
            tuple(sorted(allocations.items())),
            tuple(validators or ()),
        )
        genesis.validate()
        return genesis

    def validate(self) -> None:
        if not self.chain_id or len(self.chain_id) > CHAIN_ID_CHARS_MAX:
            raise DecodeError(f"chain id must be 1..{CHAIN_ID_CHARS_MAX} characters")
        if list(self.params) != sorted(self.params) or len({n for n, _ in self.params}) != len(self.params):
            raise DecodeError("genesis params must be sorted and unique")
        if [a for a, _ in self.allocations] != sorted({a for a, _ in self.allocations}):
            raise DecodeError("genesis allocations must be sorted and unique")
        if len({k for k, _ in self.validators}) != len(self.validators) or len(self.validators) > VALIDATORS_MAX:
            raise DecodeError(f"genesis validators must be distinct keys, at most {VALIDATORS_MAX}")
        if any(len(k) != PUBLIC_KEY_BYTES or s <= 0 for k, s in self.validators):
            raise DecodeError("a genesis validator is a 32-byte public key with a positive stake")
        if self.supply > codec.U64_MAX:
            raise DecodeError("genesis supply does not fit 64 bits")

    @property
    def param_dict(self) -> dict[str, int]:
        return dict(self.params)

    @property
    def supply(self) -> int:
        """Balances and genesis stakes: every coin that exists at genesis."""
        return sum(balance for _, balance in self.allocations) + sum(stake for _, stake in self.validators)

    def encode(self) -> bytes:
        return codec.encode(self)

    @property
    def hash(self) -> bytes:
        return sha256(b"chainlab/genesis" + self.encode())

    def to_json(self) -> str:
        return json.dumps(
            {
                "chain_id": self.chain_id,
                "consensus": self.consensus,
                "timestamp_ms": self.timestamp_ms,
                "params": dict(self.params),
                "allocations": [{"address": a.hex(), "balance": b} for a, b in self.allocations],
                "validators": [{"public_key": k.hex(), "stake": s} for k, s in self.validators],
                "genesis_hash": self.hash.hex(),
            },
            indent=2,
        )

    @classmethod
    def from_json(cls, text: str) -> "Genesis":
        try:
            raw = json.loads(text)
            genesis = cls.create(
                raw["chain_id"],
                raw["consensus"],
                int(raw["timestamp_ms"]),
                {str(k): int(v) for k, v in raw["params"].items()},
                {bytes.fromhex(a["address"]): int(a["balance"]) for a in raw["allocations"]},
                [(bytes.fromhex(v["public_key"]), int(v["stake"])) for v in raw.get("validators", [])],
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise DecodeError(f"genesis file is malformed: {exc!r}") from None
        expected = raw.get("genesis_hash")
        if expected is not None and expected != genesis.hash.hex():
            raise DecodeError(f"genesis hash {genesis.hash.hex()} does not match the file's {expected}")
        return genesis


def decode_genesis(data: bytes) -> Genesis:
    f = read_list(codec.decode(data), "genesis", 6)
    params = tuple(
        (read_str(read_list(p, "param", 2)[0], "param name", PARAM_NAME_CHARS_MAX), read_uint(p[1], "param value"))
        for p in read_list(f[3], "genesis.params", length_max=PARAMS_MAX)
    )
    allocations = tuple(
        (read_bytes(read_list(a, "allocation", 2)[0], "address", ADDRESS_BYTES), read_uint(a[1], "balance"))
        for a in read_list(f[4], "genesis.allocations", length_max=ALLOCATIONS_MAX)
    )
    validators = tuple(
        (read_bytes(read_list(v, "validator", 2)[0], "validator key", PUBLIC_KEY_BYTES), read_uint(v[1], "stake"))
        for v in read_list(f[5], "genesis.validators", length_max=VALIDATORS_MAX)
    )
    genesis = Genesis(
        read_str(f[0], "genesis.chain_id", CHAIN_ID_CHARS_MAX),
        read_str(f[1], "genesis.consensus", 16),
        read_uint(f[2], "genesis.timestamp_ms"),
        params,
        allocations,
        validators,
    )
    genesis.validate()
    return genesis


def param(genesis: Genesis, name: str) -> int:
    try:
        return genesis.param_dict[name]
    except KeyError:
        raise DecodeError(f"genesis lacks the parameter {name!r}") from None


