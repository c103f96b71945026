"""Gossip: message ids, a bounded seen cache with a time-to-live, bounded fanout.

A message's id is the hash of its topic and canonical payload. The node validates a
new message before it is forwarded (verdicts ACCEPT / IGNORE / REJECT, as in the
consensus-specs gossip rules); only ACCEPTed messages go on, to at most `fanout`
peers other than the one it came from. Every copy of a message seen again is counted,
so duplicates per message can be measured against the fanout.
"""

from collections import OrderedDict
from enum import Enum
from typing import Protocol, Sequence

from consensus.crypto import sha256


class Verdict(Enum):
    ACCEPT = "accept"  # valid and new: forward it
    IGNORE = "ignore"  # not forwarded, no blame (known, not yet valid, stale)
    REJECT = "reject"  # invalid: not forwarded, the sender is penalised


class Rng(Protocol):
    """The randomness the core needs; `random.Random` fits. Seeded per node."""

    def random(self) -> float: ...

    def randbytes(self, n: int) -> bytes: ...

    def sample(self, population: Sequence, k: int) -> list: ...

    def getrandbits(self, k: int) -> int: ...


def message_id(topic: int, payload: bytes) -> bytes:
    return sha256(bytes([topic]) + payload)


class SeenCache:
    """Message ids seen recently, with how many times each came in; oldest evicted first."""

    def __init__(self, entries_max: int, ttl_ms: int):
        assert entries_max >= 1 and ttl_ms >= 1
        self.entries_max = entries_max
        self.ttl_ms = ttl_ms
        self._entries: OrderedDict[bytes, list[int]] = OrderedDict()  # id -> [expires_ms, copies]
        self._expires_ms = 2**63  # no entry expires before this (the oldest's expiry, or earlier)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, msg_id: bytes) -> bool:
        return msg_id in self._entries

    def observe(self, msg_id: bytes, now_ms: int) -> bool:
        """Record one copy; True if this is the first copy (within the TTL)."""
        self.expire(now_ms)
        entry = self._entries.get(msg_id)
        if entry is not None:
            entry[1] += 1
            return False
        self._entries[msg_id] = [now_ms + self.ttl_ms, 1]
        self._expires_ms = min(self._expires_ms, now_ms + self.ttl_ms)
        while len(self._entries) > self.entries_max:
            self._entries.popitem(last=False)
        return True

    def copies(self, msg_id: bytes) -> int:
        entry = self._entries.get(msg_id)
        return entry[1] if entry else 0

    def expire(self, now_ms: int) -> None:
        if now_ms < self._expires_ms:
            return  # nothing is old enough yet (checked on every message: keep it cheap)
        # Insertion order is expiry order, since the TTL is one constant.
        while self._entries:
            first = next(iter(self._entries.values()))
            if first[0] > now_ms:
                self._expires_ms = first[0]
                return
            self._entries.popitem(last=False)
        self._expires_ms = 2**63


class GossipRouter:
    def __init__(self, fanout: int, seen: SeenCache, rng: Rng):
        self.fanout = fanout
        self.seen = seen
        self.rng = rng
        self.messages_first = 0  # distinct messages received
        self.messages_duplicate = 0  # copies of messages already seen
        self.messages_published = 0  # messages this node originated

    def on_receive(self, topic: int, payload: bytes, now_ms: int) -> bytes | None:
        """The message id if this is the first copy, None for a duplicate."""
        msg_id = message_id(topic, payload)
        if self.seen.observe(msg_id, now_ms):
            self.messages_first += 1
            return msg_id
        self.messages_duplicate += 1
        return None

    def publish(self, topic: int, payload: bytes, now_ms: int) -> bytes:
        """Mark a message we originate as seen, so its echoes are counted as duplicates."""
        msg_id = message_id(topic, payload)
        self.seen.observe(msg_id, now_ms)
        self.messages_published += 1
        return msg_id

    def choose_targets(self, peers: Sequence[str], exclude: str | None) -> list[str]:
        """Up to `fanout` peers, drawn with the node's seeded randomness; input must be sorted."""
        candidates = [p for p in peers if p != exclude]
        if len(candidates) <= self.fanout:
            return candidates
        return sorted(self.rng.sample(candidates, self.fanout))

    def duplicates_per_message(self) -> float:
        distinct = self.messages_first + self.messages_published
        return self.messages_duplicate / distinct if distinct else 0.0
