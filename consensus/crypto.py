"""Hashes, Ed25519 keys and addresses.

Ed25519 comes from `cryptography` (OpenSSL): it checks that signatures are canonical,
so a signature cannot be mangled into a second valid one.
"""

import functools
import hashlib
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature as _CryptoInvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

HASH_BYTES = 32
PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64
ADDRESS_BYTES = 20
ZERO_HASH = bytes(HASH_BYTES)


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def address_of(public_key: bytes) -> bytes:
    """An account's address: the first 20 bytes of sha256 of its public key."""
    assert len(public_key) == PUBLIC_KEY_BYTES
    return hashlib.sha256(b"chainlab/address" + public_key).digest()[:ADDRESS_BYTES]


# Verification is a pure function of its three inputs, so its answers are memoised: a
# vote or transaction checked once (on arrival) is not checked again when a block
# carries it, and the simulator's nodes, which share a process, check each signature
# once between them. An invalid signature stays invalid: the memo keeps False too.
@functools.lru_cache(maxsize=1 << 16)
def verify(public_key: bytes, signature: bytes, message: bytes) -> bool:
    """True when `signature` is a valid Ed25519 signature of `message` by `public_key`."""
    if len(public_key) != PUBLIC_KEY_BYTES or len(signature) != SIGNATURE_BYTES:
        return False
    key = _public_key(public_key)
    if key is None:
        return False
    try:
        key.verify(signature, message)
    except _CryptoInvalidSignature:
        return False
    return True


@functools.lru_cache(maxsize=1 << 14)
def _public_key(public_key: bytes) -> Ed25519PublicKey | None:
    """The parsed key, kept for the senders and validators seen recently: a busy sender's
    key is parsed once, not once per transaction."""
    try:
        return Ed25519PublicKey.from_public_bytes(public_key)
    except ValueError:
        return None


@functools.lru_cache(maxsize=1 << 10)
def _private_key(seed: bytes) -> Ed25519PrivateKey:
    # Parsed once per key: a validator signs every slot, and parsing costs as much as signing.
    return Ed25519PrivateKey.from_private_bytes(seed)


@dataclass(frozen=True, slots=True)
class KeyPair:
    """An Ed25519 key pair. `seed` is the 32-byte private key; keep it secret."""

    seed: bytes
    public_key: bytes

    @classmethod
    def from_seed(cls, seed: bytes) -> "KeyPair":
        if len(seed) != 32:
            raise ValueError(f"an Ed25519 seed is 32 bytes, got {len(seed)}")
        public = Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes_raw()
        return cls(seed=seed, public_key=public)

    @classmethod
    def derive(cls, master_seed: bytes | str, purpose: str, index: int) -> "KeyPair":
        """A deterministic key from a master seed, a purpose and an index.

        Used for prefunded genesis accounts and test keys, so that one seed gives the
        same accounts on every machine. Never for keys that protect real value.
        """
        if isinstance(master_seed, str):
            master_seed = master_seed.encode()
        material = b"chainlab/derive\x00" + master_seed + b"\x00" + purpose.encode() + b"\x00" + index.to_bytes(8, "big")
        return cls.from_seed(sha256(material))

    @property
    def address(self) -> bytes:
        return address_of(self.public_key)

    def sign(self, message: bytes) -> bytes:
        return _private_key(self.seed).sign(message)

    def __repr__(self) -> str:  # never print the seed
        return f"KeyPair(public_key={self.public_key.hex()})"
