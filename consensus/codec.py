"""One canonical encoding for everything hashed or signed (DESIGN.md section 4).

Objects are msgpack arrays with a fixed field order; integers use msgpack's smallest
form, bytes are `bin`, text is `str`. Decoding is bounded, refuses maps with
non-string keys, ext types and floats, and then re-encodes: input whose bytes differ
from the re-encoding is rejected, so two byte strings never decode to one object.
"""

from typing import Any

import msgpack

from consensus.errors import DecodeError

# A decoded value can never be larger than the frame it came in; this bound is a
# second fence for callers that decode bytes that did not come through a framer.
DECODE_BYTES_MAX = 16 * 1024 * 1024

U64_MAX = 2**64 - 1


def _reject_ext(code: int, data: bytes) -> Any:
    raise DecodeError(f"msgpack ext type {code} is not allowed")


def encode(value: Any) -> bytes:
    """Canonical bytes of a tree of lists, ints, bytes and str."""
    # Tuples (and the NamedTuple values in consensus.types) pack as arrays.
    return msgpack.packb(value, use_bin_type=True)


def decode(data: bytes, *, bytes_max: int = DECODE_BYTES_MAX) -> Any:
    """Decode canonical bytes, rejecting anything that does not re-encode identically."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise DecodeError(f"expected bytes, got {type(data).__name__}")
    if len(data) > bytes_max:
        raise DecodeError(f"{len(data)} bytes is over the decode limit of {bytes_max}")
    try:
        value = msgpack.unpackb(
            data,
            raw=False,
            use_list=True,
            strict_map_key=True,
            ext_hook=_reject_ext,
            # The timestamp ext (-1) bypasses ext_hook; as a float it fails the re-encode check.
            timestamp=1,
        )  # unpackb bounds every string, array and map by len(data), checked above
    except DecodeError:
        raise
    except (ValueError, TypeError, msgpack.UnpackException, msgpack.ExtraData, RecursionError) as exc:
        raise DecodeError(f"malformed msgpack: {exc}") from None
    # Floats need no pass of their own: every typed reader below refuses them.
    try:
        canonical = encode(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise DecodeError(f"value cannot be re-encoded canonically: {exc}") from None
    if canonical != bytes(data):
        raise DecodeError("non-canonical encoding (re-encoding gives different bytes)")
    return value


# Field readers: each checks one field of a decoded array and says which one failed.

def read_list(value: Any, what: str, length: int | None = None, length_max: int | None = None) -> list:
    if not isinstance(value, list):
        raise DecodeError(f"{what}: expected an array, got {type(value).__name__}")
    if length is not None and len(value) != length:
        raise DecodeError(f"{what}: expected {length} fields, got {len(value)}")
    if length_max is not None and len(value) > length_max:
        raise DecodeError(f"{what}: {len(value)} items is over the limit of {length_max}")
    return value


def read_uint(value: Any, what: str, maximum: int = U64_MAX) -> int:
    # bool is an int subclass in Python, but msgpack decodes true/false to bool.
    if not isinstance(value, int) or isinstance(value, bool):
        raise DecodeError(f"{what}: expected an unsigned integer, got {type(value).__name__}")
    if value < 0 or value > maximum:
        raise DecodeError(f"{what}: {value} is outside 0..{maximum}")
    return value


def read_bytes(value: Any, what: str, length: int | None = None, length_max: int | None = None) -> bytes:
    if not isinstance(value, bytes):
        raise DecodeError(f"{what}: expected bytes, got {type(value).__name__}")
    if length is not None and len(value) != length:
        raise DecodeError(f"{what}: expected {length} bytes, got {len(value)}")
    if length_max is not None and len(value) > length_max:
        raise DecodeError(f"{what}: {len(value)} bytes is over the limit of {length_max}")
    return value


def read_str(value: Any, what: str, length_max: int) -> str:
    if not isinstance(value, str):
        raise DecodeError(f"{what}: expected text, got {type(value).__name__}")
    if len(value) > length_max:
        raise DecodeError(f"{what}: {len(value)} characters is over the limit of {length_max}")
    return value
