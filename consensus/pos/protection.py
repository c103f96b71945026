"""Slashing protection, the pure part: what one validator has signed, and whether it may
sign the next thing without ever forming a slashable pair, crash or no crash.

The record keeps watermarks, EIP-3076's minimal approach, rather than every message:
- the highest slot it proposed in: a proposal is refused at a slot <= that slot;
- the highest source and target epochs it attested with: an attestation is refused
  when its target epoch <= the last target epoch or its source epoch < the last
  source epoch.
Accepted attestations therefore have strictly increasing targets and non-decreasing
sources, which rules out both a double vote (equal targets) and a surround (a later
vote would need a smaller source or a smaller target). Accepted proposals have
strictly increasing slots, which rules out a double proposal. The price: an honest
request that arrives late (a lower slot or target than one already signed) is refused
too, and the same block is never signed twice (keep the signature to re-send it).

How the node shell uses it (DESIGN.md section 2: persist, then send):
    record = record.record_attestation(source_epoch, target_epoch)  # raises Refused
    store(record.encode())  # durable before the signature exists
    signature = key.sign(data.signing_bytes(chain_id))
After a crash the shell decodes the stored record and carries on; since it was
written before signing, it never lags what was signed.
"""

from typing import Any, NamedTuple

from consensus import codec
from consensus.codec import read_bytes, read_list, read_str, read_uint
from consensus.crypto import PUBLIC_KEY_BYTES
from consensus.errors import ChainlabError, DecodeError
from consensus.types import CHAIN_ID_CHARS_MAX

RECORD_TAG = "chainlab/protection/v1"  # what the bytes are, and which layout


class Refused(ChainlabError):
    """The validator must not sign this: it could form a slashable pair with what it signed."""


class ProtectionRecord(NamedTuple):
    """What one validator (by public key, on one chain) has signed. None: nothing yet."""

    chain_id: str
    public_key: bytes
    last_proposal_slot: int | None
    last_source_epoch: int | None
    last_target_epoch: int | None

    @classmethod
    def empty(cls, chain_id: str, public_key: bytes) -> "ProtectionRecord":
        return cls(chain_id, public_key, None, None, None)

    def check_proposal(self, slot: int) -> None:
        # Rule 1: proposal slots strictly increase (no two blocks for one slot).
        if self.last_proposal_slot is not None and slot <= self.last_proposal_slot:
            raise Refused(f"proposal at slot {slot}: already proposed at slot {self.last_proposal_slot}")

    def check_attestation(self, source_epoch: int, target_epoch: int) -> None:
        # A vote's source is a justified checkpoint before (or, at genesis, at) its target.
        if source_epoch > target_epoch:
            raise Refused(f"attestation {source_epoch}->{target_epoch}: source after target")
        if self.last_target_epoch is not None:
            # Rule 2: target epochs strictly increase (no double vote, no surrounded vote).
            if target_epoch <= self.last_target_epoch:
                last = self.last_target_epoch
                raise Refused(f"attestation {source_epoch}->{target_epoch}: already attested to target epoch {last}")
        if self.last_source_epoch is not None:
            # Rule 3: source epochs never decrease (no surrounding vote).
            if source_epoch < self.last_source_epoch:
                last = self.last_source_epoch
                raise Refused(f"attestation {source_epoch}->{target_epoch}: already attested from source epoch {last}")

    def record_proposal(self, slot: int) -> "ProtectionRecord":
        """The record after signing a proposal at `slot`; raises Refused if it may not."""
        self.check_proposal(slot)
        return self._replace(last_proposal_slot=slot)

    def record_attestation(self, source_epoch: int, target_epoch: int) -> "ProtectionRecord":
        """The record after signing an attestation; raises Refused if it may not."""
        self.check_attestation(source_epoch, target_epoch)
        return self._replace(last_source_epoch=source_epoch, last_target_epoch=target_epoch)

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
            _read_optional_uint(f[4], "protection record.last_source_epoch"),
            _read_optional_uint(f[5], "protection record.last_target_epoch"),
        )
        # The attestation watermarks are written together, source never after target.
        source, target = record.last_source_epoch, record.last_target_epoch
        if (source is None) != (target is None) or (source is not None and source > target):
            raise DecodeError(f"protection record: inconsistent attestation watermarks {source}, {target}")
        return record


def _read_optional_uint(value: Any, what: str) -> int | None:
    return None if value is None else read_uint(value, what)
