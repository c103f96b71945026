"""Slashing protection, the pure part: what one validator has signed, and whether it may
sign the next thing without ever forming a slashable pair, crash or no crash.

A validator attests in every slot, and all its attestations of one epoch carry the same
Casper FFG link (source checkpoint -> target checkpoint); the slashing rules judge the
link only (consensus.pos.slashing). So the record must let it sign the same link again
in later slots, and nothing that conflicts with it.

The record keeps watermarks, EIP-3076's minimal approach, rather than every message:
- the highest slot it proposed in: a proposal is refused at a slot <= that slot;
- the last link it attested with, both checkpoints in full (epoch and root). An
  attestation is allowed when its link is exactly the last link (the vote of a later
  slot of the epoch); otherwise its target epoch must be > the last target epoch and
  its source epoch >= the last source epoch. Always, source epoch <= target epoch.
The distinct links accepted therefore have strictly increasing targets and
non-decreasing sources, which rules out both a double vote (two links with equal
targets) and a surround (a later link would need a smaller source or a smaller
target); a repeat of the last link forms no pair with anything, since the rules judge
links only. Accepted proposals have strictly increasing slots, which rules out a
double proposal. The price: an honest request that arrives late (a lower slot, or a
link older than the last one) is refused too, and the same block is never signed
twice (keep the signature to re-send it).

How the node shell uses it (DESIGN.md section 2: persist, then send):
    record = record.record_attestation(data.source, data.target)  # raises Refused
    store(record.encode())  # durable before the signature exists
    signature = key.sign(data.signing_bytes(chain_id))
After a crash the shell decodes the stored record and carries on; since it was
written before signing, it never lags what was signed. Re-signing the last link
returns an equal record, so that store may be skipped.
"""

from typing import Any, NamedTuple

from consensus import codec
from consensus.codec import read_bytes, read_list, read_str, read_uint
from consensus.crypto import PUBLIC_KEY_BYTES
from consensus.errors import ChainlabError, DecodeError
from consensus.pos.types import HASH_BYTES, Checkpoint
from consensus.types import CHAIN_ID_CHARS_MAX

# What the bytes are, and which layout. v2: the last link in full (v1 kept epochs only).
RECORD_TAG = "chainlab/protection/v2"


class Refused(ChainlabError):
    """The validator must not sign this: it could form a slashable pair with what it signed."""


class ProtectionRecord(NamedTuple):
    """What one validator (by public key, on one chain) has signed. None: nothing yet.

    last_source and last_target are the last attested link: both None or both set.
    """

    chain_id: str
    public_key: bytes
    last_proposal_slot: int | None
    last_source: Checkpoint | None
    last_target: Checkpoint | None

    @classmethod
    def empty(cls, chain_id: str, public_key: bytes) -> "ProtectionRecord":
        return cls(chain_id, public_key, None, None, None)

    def check_proposal(self, slot: int) -> None:
        # Rule 1: proposal slots strictly increase (no two blocks for one slot).
        if self.last_proposal_slot is not None and slot <= self.last_proposal_slot:
            raise Refused(f"proposal at slot {slot}: already proposed at slot {self.last_proposal_slot}")

    def check_attestation(self, source: Checkpoint, target: Checkpoint) -> None:
        link = _describe(source, target)
        # A vote's source is a justified checkpoint before (or, at genesis, at) its target.
        if source.epoch > target.epoch:
            raise Refused(f"attestation {link}: source after target")
        if self.last_source is None or self.last_target is None:
            return  # nothing attested yet
        # The same link again is the vote of a later slot of the epoch: it forms no
        # slashable pair with anything, since the rules judge links only.
        if (source, target) == (self.last_source, self.last_target):
            return
        last = _describe(self.last_source, self.last_target)
        # Rule 2: a new link needs a later target epoch (no double vote, no surrounded vote).
        if target.epoch == self.last_target.epoch:
            raise Refused(f"attestation {link}: already attested to target epoch {target.epoch} with link {last}")
        if target.epoch < self.last_target.epoch:
            raise Refused(f"attestation {link}: already attested to target epoch {self.last_target.epoch} ({last})")
        # Rule 3: source epochs never decrease (no surrounding vote).
        if source.epoch < self.last_source.epoch:
            raise Refused(f"attestation {link}: already attested from source epoch {self.last_source.epoch} ({last})")

    def record_proposal(self, slot: int) -> "ProtectionRecord":
        """The record after signing a proposal at `slot`; raises Refused if it may not."""
        self.check_proposal(slot)
        return self._replace(last_proposal_slot=slot)

    def record_attestation(self, source: Checkpoint, target: Checkpoint) -> "ProtectionRecord":
        """The record after signing an attestation with the link source -> target;
        raises Refused if it may not. The last link again gives an equal record."""
        self.check_attestation(source, target)
        return self._replace(last_source=source, last_target=target)

    def encode(self) -> bytes:
        return codec.encode((RECORD_TAG,) + tuple(self))

    @classmethod
    def decode(cls, data: bytes) -> "ProtectionRecord":
        f = read_list(codec.decode(data), "protection record", 6)
        if f[0] != RECORD_TAG:
            raise DecodeError(f"protection record: expected the tag {RECORD_TAG!r}, got {f[0]!r}")
        record = cls(
            read_str(f[1], "protection record.chain_id", CHAIN_ID_CHARS_MAX),
            read_bytes(f[2], "protection record.public_key", PUBLIC_KEY_BYTES),
            _read_optional_uint(f[3], "protection record.last_proposal_slot"),
            _read_optional_checkpoint(f[4], "protection record.last_source"),
            _read_optional_checkpoint(f[5], "protection record.last_target"),
        )
        # The link is written whole, its source never after its target.
        source, target = record.last_source, record.last_target
        if (source is None) != (target is None) or (source is not None and source.epoch > target.epoch):
            raise DecodeError(f"protection record: inconsistent last link {source}, {target}")
        return record


def _describe(source: Checkpoint, target: Checkpoint) -> str:
    """A link for messages: epochs and the first bytes of the roots, enough to tell two apart."""
    return f"{source.epoch}:{source.root[:4].hex()}->{target.epoch}:{target.root[:4].hex()}"


def _read_optional_uint(value: Any, what: str) -> int | None:
    return None if value is None else read_uint(value, what)


def _read_optional_checkpoint(value: Any, what: str) -> Checkpoint | None:
    if value is None:
        return None
    f = read_list(value, what, 2)
    return Checkpoint(read_uint(f[0], f"{what}.epoch"), read_bytes(f[1], f"{what}.root", HASH_BYTES))
