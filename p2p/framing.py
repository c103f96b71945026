"""Length-prefixed frames: a 4-byte big-endian length, then the body.

The length is checked against `frame_bytes_max` as soon as its 4 bytes arrive, before
any of the body is buffered, so a peer cannot make us hold more than one frame.
"""

from p2p.errors import FrameTooLarge, MalformedFrame

LENGTH_BYTES = 4


def encode_frame(body: bytes, frame_bytes_max: int) -> bytes:
    assert len(body) <= frame_bytes_max, "the sender builds frames within the limit"
    return len(body).to_bytes(LENGTH_BYTES, "big") + body


class FrameDecoder:
    def __init__(self, frame_bytes_max: int):
        self.frame_bytes_max = frame_bytes_max
        self._buffer = bytearray()
        self._expected: int | None = None  # body length of the frame being read

    @property
    def buffered_bytes(self) -> int:
        return len(self._buffer)

    def push(self, data: bytes) -> None:
        """Add received bytes; take frames out with `next_frame`."""
        self._buffer += data

    def next_frame(self) -> bytes | None:
        """The next complete frame body, or None. Raises only on reaching a bad length,
        so frames before it are delivered whatever way the bytes were split."""
        if self._expected is None:
            if len(self._buffer) < LENGTH_BYTES:
                return None
            length = int.from_bytes(self._buffer[:LENGTH_BYTES], "big")
            if length > self.frame_bytes_max:
                raise FrameTooLarge(f"frame of {length} bytes is over the limit of {self.frame_bytes_max}")
            if length == 0:
                raise MalformedFrame("empty frame")
            del self._buffer[:LENGTH_BYTES]
            self._expected = length
        if len(self._buffer) < self._expected:
            return None
        frame = bytes(self._buffer[: self._expected])
        del self._buffer[: self._expected]
        self._expected = None
        return frame

    def feed(self, data: bytes) -> list[bytes]:
        """Add bytes; return every complete frame body. Raises on an oversized length."""
        self.push(data)
        frames: list[bytes] = []
        while (frame := self.next_frame()) is not None:
            frames.append(frame)
        assert len(self._buffer) <= max(self.frame_bytes_max, LENGTH_BYTES)
        return frames
