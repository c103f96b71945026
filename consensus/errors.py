"""Expected failures, each a named exception with a message that says what was wrong.

Two failure channels (STYLE.md 8): bad input from a peer or a client raises one of
these and becomes a verdict; a broken internal invariant is an `assert`.
"""


class ChainlabError(Exception):
    """Base of every expected failure in the core."""


class DecodeError(ChainlabError):
    """Bytes that are not the canonical encoding of the expected object."""


class ValidationError(ChainlabError):
    """A well-formed object that breaks a consensus rule."""


class InvalidSignature(ValidationError):
    pass


class InvalidTransaction(ValidationError):
    pass


class InvalidTransactionSignature(InvalidSignature, InvalidTransaction):
    """A transaction whose signature does not verify: both a bad signature and a bad transaction."""


class WrongChain(InvalidTransaction):
    pass


class BadNonce(InvalidTransaction):
    pass


class InsufficientFunds(InvalidTransaction):
    pass


class FeeTooLow(InvalidTransaction):
    pass


class InvalidBlock(ValidationError):
    pass


class UnknownParent(InvalidBlock):
    """The parent is not known (yet): not a fault of the block, it may be an orphan."""


class DuplicateBlock(ValidationError):
    pass


class InvalidProofOfWork(InvalidBlock):
    pass


class BadTimestamp(InvalidBlock):
    pass


class FutureBlock(BadTimestamp):
    """Too far ahead of our clock: ignore now, it may become valid later."""


class ReorgTooDeep(ValidationError):
    """Builds on a block at or below the reorg bound: treated as final, never reverted."""
