"""Peer scores and time-bounded bans.

Each offence lowers a peer's score by its penalty; at or below the threshold the
peer is disconnected and banned until `now + ban_ms`. Bans are by node id and by
address, listed and clearable over RPC. Scores are forgotten when a ban expires.
"""

from enum import IntEnum


class Offence(IntEnum):
    """Penalty per offence. Malformed or forged data is banned at once; slowness is not."""

    MALFORMED_MESSAGE = 100
    INVALID_BLOCK = 100
    INVALID_SIGNATURE = 100
    BAD_HANDSHAKE = 100
    INVALID_TRANSACTION = 20  # may be a race (spent balance), so not instantly fatal
    UNSOLICITED_RESPONSE = 25
    OVERSIZED_RESPONSE = 50
    REQUEST_TIMEOUT = 10
    TOO_MANY_ORPHANS = 5


class PeerScores:
    def __init__(self, ban_ms: int, threshold: int, entries_max: int = 4096):
        self.ban_ms = ban_ms
        self.threshold = threshold
        self.entries_max = entries_max
        self.scores: dict[str, int] = {}
        self.bans: dict[str, tuple[int, str]] = {}  # node id or address -> (until_ms, reason)

    def penalise(self, key: str, offence: Offence, now_ms: int, reason: str) -> bool:
        """Lower the score; True if the peer is now banned."""
        score = self.scores.get(key, 0) - int(offence)
        self.scores[key] = score
        if len(self.scores) > self.entries_max:
            # Forget the mildest records first; a ban survives in `bans` regardless.
            mildest = max(self.scores, key=lambda k: (self.scores[k], k))
            del self.scores[mildest]
        if score <= self.threshold:
            self.ban(key, now_ms, reason)
            return True
        return False

    def ban(self, key: str, now_ms: int, reason: str) -> None:
        self.bans[key] = (now_ms + self.ban_ms, reason)
        while len(self.bans) > self.entries_max:
            oldest = min(self.bans, key=lambda k: (self.bans[k][0], k))
            del self.bans[oldest]

    def is_banned(self, key: str, now_ms: int) -> bool:
        entry = self.bans.get(key)
        if entry is None:
            return False
        if entry[0] <= now_ms:
            del self.bans[key]
            self.scores.pop(key, None)
            return False
        return True

    def clear(self, key: str) -> bool:
        self.scores.pop(key, None)
        return self.bans.pop(key, None) is not None

    def expire(self, now_ms: int) -> None:
        for key in sorted(k for k, (until, _) in self.bans.items() if until <= now_ms):
            del self.bans[key]
            self.scores.pop(key, None)

    def list_bans(self, now_ms: int) -> list[dict]:
        self.expire(now_ms)
        return [{"peer": k, "until_ms": until, "reason": reason} for k, (until, reason) in sorted(self.bans.items())]
