"""The proof-of-stake vocabulary: checkpoints, votes, proposals, and slashing evidence.

Every signed object is signed over its canonical encoding (consensus.codec) under a
domain tag and the chain id, so a signature for one purpose or one network can never
be replayed as another. Validators are named by their index in the registry.
"""

import functools
from typing import NamedTuple

from consensus import codec
from consensus.crypto import verify

HASH_BYTES = 32
SIGNATURE_BYTES = 64

DOMAIN_ATTESTATION = "chainlab/attestation/v1"
DOMAIN_PROPOSAL = "chainlab/proposal/v1"
DOMAIN_REVEAL = "chainlab/reveal/v1"


class Checkpoint(NamedTuple):
    """An epoch boundary: the block at or before the epoch's first slot, on one branch."""

    epoch: int
    root: bytes  # block hash


class AttestationData(NamedTuple):
    """What a validator votes for in a slot (Gasper): an LMD head and an FFG link."""

    slot: int
    head: bytes  # the block the validator sees as its head
    source: Checkpoint  # its latest justified checkpoint
    target: Checkpoint  # the checkpoint of the current epoch on its head's branch

    def signing_bytes(self, chain_id: str) -> bytes:
        return _attestation_signing_bytes(self, chain_id)


@functools.lru_cache(maxsize=1 << 12)
def _attestation_signing_bytes(data: AttestationData, chain_id: str) -> bytes:
    # Memoised: every validator of a slot signs the same data, and every node checks each vote.
    return codec.encode((DOMAIN_ATTESTATION, chain_id) + _plain(data))


class Attestation(NamedTuple):
    validator: int
    data: AttestationData
    signature: bytes

    def verify(self, chain_id: str, public_key: bytes) -> bool:
        return verify(public_key, self.signature, self.data.signing_bytes(chain_id))


class Proposal(NamedTuple):
    """A proposer's claim to one slot: the block it proposed there."""

    validator: int
    slot: int
    block_root: bytes  # hash of the block's header without the proposer's signature

    def signing_bytes(self, chain_id: str) -> bytes:
        return codec.encode((DOMAIN_PROPOSAL, chain_id) + _plain(self))


class SignedProposal(NamedTuple):
    proposal: Proposal
    signature: bytes

    def verify(self, chain_id: str, public_key: bytes) -> bool:
        return verify(public_key, self.signature, self.proposal.signing_bytes(chain_id))


class ProposerSlashing(NamedTuple):
    """Two signed proposals of one validator for one slot with different blocks."""

    a: SignedProposal
    b: SignedProposal


class AttesterSlashing(NamedTuple):
    """Two signed attestations of one validator that form a double or a surround vote."""

    a: Attestation
    b: Attestation


def reveal_signing_bytes(chain_id: str, epoch: int) -> bytes:
    """A proposer's reveal is its signature over the epoch; Ed25519 is deterministic, so
    the reveal is fixed in advance yet unknown to others until published (RANDAO)."""
    return codec.encode((DOMAIN_REVEAL, chain_id, epoch))


def _plain(value: tuple) -> tuple:
    """A NamedTuple tree as plain tuples (what the codec packs as arrays)."""
    return tuple(_plain(v) if isinstance(v, tuple) else v for v in value)
