"""Length-prefixed framing (p2p.framing, DESIGN.md sections 4 and 6).

What: FrameDecoder reassembles frames exactly however TCP splits the stream, refuses
an oversized length as soon as the 4 length bytes are in (before any body byte is
buffered), refuses an empty frame, and never buffers more than `frame_bytes_max`.

How: hypothesis concatenates random frames, cuts the stream at random points and
feeds the pieces one by one; the decoded bodies must equal the originals, in order,
and `buffered_bytes` is checked after every piece. Hostile lengths are fed a byte at
a time so the test sees exactly when the decoder gives up.
"""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2p.errors import FrameTooLarge, MalformedFrame, ProtocolError, Reason
from p2p.framing import LENGTH_BYTES, FrameDecoder, encode_frame

FRAME_MAX = 1_000  # small, so hypothesis reaches the limit cheaply

bodies = st.lists(st.binary(min_size=1, max_size=FRAME_MAX), min_size=0, max_size=8)


def cut(data: bytes, points: list[int]) -> list[bytes]:
    """Split `data` at the given offsets (any order, duplicates allowed)."""
    edges = [0, *sorted(p % (len(data) + 1) for p in points), len(data)]
    return [data[a:b] for a, b in zip(edges, edges[1:])]


def test_encode_frame_is_a_big_endian_length_then_the_body():
    assert encode_frame(b"abc", FRAME_MAX) == b"\x00\x00\x00\x03abc"
    assert LENGTH_BYTES == 4


def test_a_frame_of_exactly_the_limit_is_accepted():
    body = bytes(range(256)) * 3 + b"x" * (FRAME_MAX - 768)
    assert len(body) == FRAME_MAX
    assert FrameDecoder(FRAME_MAX).feed(encode_frame(body, FRAME_MAX)) == [body]


@settings(max_examples=200, deadline=None)
@given(bodies=bodies, points=st.lists(st.integers(min_value=0, max_value=10_000), max_size=20))
def test_frames_split_at_arbitrary_points_reassemble_exactly(bodies, points):
    stream = b"".join(encode_frame(b, FRAME_MAX) for b in bodies)
    decoder = FrameDecoder(FRAME_MAX)
    out: list[bytes] = []
    for piece in cut(stream, points):
        out.extend(decoder.feed(piece))
        # Never more than one frame (body) held, whatever the split.
        assert decoder.buffered_bytes <= FRAME_MAX
    assert out == bodies
    assert decoder.buffered_bytes == 0


@settings(max_examples=100, deadline=None)
@given(bodies=bodies)
def test_byte_at_a_time_equals_all_at_once(bodies):
    stream = b"".join(encode_frame(b, FRAME_MAX) for b in bodies)
    one_by_one = FrameDecoder(FRAME_MAX)
    out: list[bytes] = []
    for i in range(len(stream)):
        out.extend(one_by_one.feed(stream[i : i + 1]))
    assert out == bodies == FrameDecoder(FRAME_MAX).feed(stream)


def test_a_partial_frame_is_held_until_its_last_byte():
    decoder = FrameDecoder(FRAME_MAX)
    frame = encode_frame(b"hello", FRAME_MAX)
    assert decoder.feed(frame[:-1]) == []
    assert decoder.buffered_bytes == len(b"hello") - 1  # the length prefix was consumed
    assert decoder.feed(frame[-1:]) == [b"hello"]
    assert decoder.buffered_bytes == 0


@pytest.mark.parametrize("length", [FRAME_MAX + 1, 2 * FRAME_MAX, 2**32 - 1])
def test_an_oversized_length_is_refused_as_soon_as_its_four_bytes_arrive(length):
    decoder = FrameDecoder(FRAME_MAX)
    prefix = length.to_bytes(4, "big")
    # Three of the four length bytes: nothing to decide yet.
    assert decoder.feed(prefix[:3]) == []
    with pytest.raises(FrameTooLarge) as info:
        decoder.feed(prefix[3:])  # no body byte has been sent
    assert info.value.reason is Reason.FRAME_TOO_LARGE
    assert isinstance(info.value, ProtocolError)
    assert str(length) in str(info.value)


def test_an_oversized_length_is_refused_without_waiting_for_the_body():
    # Only 10 of the announced FRAME_MAX + 1 body bytes are here: a decoder that waited
    # for the body before checking would return [] instead of raising.
    decoder = FrameDecoder(FRAME_MAX)
    with pytest.raises(FrameTooLarge):
        decoder.feed((FRAME_MAX + 1).to_bytes(4, "big") + b"\x00" * 10)


def test_an_oversized_length_after_good_frames_is_refused():
    decoder = FrameDecoder(FRAME_MAX)
    assert decoder.feed(encode_frame(b"a", FRAME_MAX)) == [b"a"]
    with pytest.raises(FrameTooLarge):
        decoder.feed((FRAME_MAX + 1).to_bytes(4, "big"))


def test_an_empty_frame_is_malformed():
    decoder = FrameDecoder(FRAME_MAX)
    with pytest.raises(MalformedFrame) as info:
        decoder.feed(b"\x00\x00\x00\x00")
    assert info.value.reason is Reason.PROTOCOL_ERROR


def test_an_empty_frame_split_across_feeds_is_malformed():
    decoder = FrameDecoder(FRAME_MAX)
    assert decoder.feed(b"\x00\x00") == []
    with pytest.raises(MalformedFrame):
        decoder.feed(b"\x00\x00")


@settings(max_examples=100, deadline=None)
@given(
    bodies=bodies,
    lengths=st.lists(st.integers(min_value=0, max_value=2**32 - 1), min_size=1, max_size=4),
    points=st.lists(st.integers(min_value=0, max_value=10_000), max_size=10),
)
def test_buffered_bytes_never_exceed_the_limit_under_hostile_lengths(bodies, lengths, points):
    # Good frames, then frames whose lengths are arbitrary and bodies short: the decoder
    # either waits within the limit or raises a ProtocolError, nothing else.
    stream = b"".join(encode_frame(b, FRAME_MAX) for b in bodies)
    stream += b"".join(n.to_bytes(4, "big") + b"\x01" * min(n, 50) for n in lengths)
    decoder = FrameDecoder(FRAME_MAX)
    for piece in cut(stream, points):
        try:
            decoder.feed(piece)
        except (FrameTooLarge, MalformedFrame):
            break
        assert decoder.buffered_bytes <= FRAME_MAX
