"""Protocol errors: each carries the Goodbye reason the connection closes with."""

from enum import IntEnum


class Reason(IntEnum):
    PROTOCOL_ERROR = 1
    WRONG_CHAIN = 2
    WRONG_GENESIS = 3
    BAD_HANDSHAKE = 4
    BANNED = 5
    TOO_MANY_PEERS = 6
    DUPLICATE_CONNECTION = 7
    SHUTDOWN = 8
    MISBEHAVIOUR = 9
    TIMEOUT = 10
    SELF_CONNECTION = 11
    VERSION_MISMATCH = 12
    FRAME_TOO_LARGE = 13
    REMOVED = 14  # an operator removed the peer
    TOO_SLOW = 15

    @classmethod
    def describe(cls, code: int) -> str:
        try:
            return cls(code).name.lower()
        except ValueError:
            return f"unknown({code})"


class ProtocolError(Exception):
    """Input that breaks the protocol; the connection says Goodbye with `reason` and closes."""

    reason = Reason.PROTOCOL_ERROR


class MalformedFrame(ProtocolError):
    pass


class FrameTooLarge(ProtocolError):
    reason = Reason.FRAME_TOO_LARGE


class MalformedMessage(ProtocolError):
    pass


class UnexpectedMessage(ProtocolError):
    pass


class HandshakeFailed(ProtocolError):
    reason = Reason.BAD_HANDSHAKE


class ChainMismatch(HandshakeFailed):
    reason = Reason.WRONG_CHAIN


class GenesisMismatch(HandshakeFailed):
    reason = Reason.WRONG_GENESIS


class VersionMismatch(HandshakeFailed):
    reason = Reason.VERSION_MISMATCH


class SelfConnection(HandshakeFailed):
    reason = Reason.SELF_CONNECTION
