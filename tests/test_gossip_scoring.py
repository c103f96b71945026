"""Gossip bookkeeping, peer scores and the orphan pool (p2p.gossip, p2p.scoring, p2p.sync).

What: the SeenCache forgets ids after their TTL, never holds more than entries_max
(oldest out first) and counts every copy; the GossipRouter counts duplicates, never
forwards to more than `fanout` peers nor back to the source, and draws targets only
from its seeded random.Random; PeerScores add penalties up to a ban at the threshold,
the ban lasts exactly ban_ms and clear() lifts it; the OrphanPool is bounded (oldest
evicted), releases children in one stable order, follows parents to the missing
root, and drops orphans after their TTL.

How: direct calls with explicit `now_ms` values on either side of each boundary
(time is an argument, so no sleeps); orphan blocks are bare headers whose parents are
chosen by the test, since the pool only looks at hashes and parents.
"""

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consensus.crypto import sha256
from consensus.types import EMPTY_CONSENSUS_ROOT, Block, BlockHeader
from p2p.gossip import GossipRouter, SeenCache, message_id
from p2p.scoring import Offence, PeerScores
from p2p.sync import OrphanPool

# --- SeenCache -------------------------------------------------------------------------


def mid(i: int) -> bytes:
    return sha256(b"msg %d" % i)


def test_first_copy_is_new_later_copies_are_counted():
    seen = SeenCache(entries_max=10, ttl_ms=1_000)
    assert seen.copies(mid(1)) == 0
    assert seen.observe(mid(1), 0) is True
    assert seen.observe(mid(1), 10) is False
    assert seen.observe(mid(1), 20) is False
    assert seen.copies(mid(1)) == 3
    assert seen.copies(mid(2)) == 0
    assert len(seen) == 1 and mid(1) in seen


def test_an_id_expires_exactly_at_its_ttl():
    seen = SeenCache(entries_max=10, ttl_ms=1_000)
    seen.observe(mid(1), 5_000)
    assert seen.observe(mid(1), 5_999) is False  # still within the TTL
    assert seen.copies(mid(1)) == 2
    assert seen.observe(mid(1), 6_000) is True  # 1_000 ms after the first copy: forgotten, new again
    assert seen.copies(mid(1)) == 1  # the count starts over


def test_a_duplicate_does_not_extend_the_ttl():
    seen = SeenCache(entries_max=10, ttl_ms=1_000)
    seen.observe(mid(1), 0)
    seen.observe(mid(1), 900)
    seen.expire(1_000)
    assert mid(1) not in seen


def test_expire_removes_only_the_old_ids():
    seen = SeenCache(entries_max=10, ttl_ms=100)
    for i in range(5):
        seen.observe(mid(i), i * 10)  # expire at 100, 110, ... 140
    seen.expire(120)
    assert [mid(i) in seen for i in range(5)] == [False, False, False, True, True]
    assert len(seen) == 2


def test_the_oldest_id_is_evicted_past_entries_max():
    seen = SeenCache(entries_max=3, ttl_ms=10**9)
    for i in range(4):
        assert seen.observe(mid(i), i)
    assert len(seen) == 3
    assert mid(0) not in seen and all(mid(i) in seen for i in (1, 2, 3))
    # An evicted id is new again when it comes back (and evicts the next oldest).
    assert seen.observe(mid(0), 10) is True
    assert mid(1) not in seen and len(seen) == 3


@settings(max_examples=100, deadline=None)
@given(ops=st.lists(st.tuples(st.integers(min_value=0, max_value=30), st.integers(min_value=0, max_value=50)),
                    max_size=200),
       entries_max=st.integers(min_value=1, max_value=8), ttl_ms=st.integers(min_value=1, max_value=200))
def test_seen_cache_never_exceeds_its_bound_and_matches_a_reference(ops, entries_max, ttl_ms):
    # A dumb reference: a list of [id, first_seen_ms, copies], oldest first.
    seen = SeenCache(entries_max, ttl_ms)
    ref: list[list] = []
    now = 0
    for msg, step in ops:
        now += step
        ref = [e for e in ref if e[1] + ttl_ms > now]
        found = next((e for e in ref if e[0] == msg), None)
        if found:
            found[2] += 1
        else:
            ref.append([msg, now, 1])
            ref = ref[-entries_max:]
        assert seen.observe(mid(msg), now) is (found is None)
        assert len(seen) == len(ref) <= entries_max
        assert all(seen.copies(mid(e[0])) == e[2] for e in ref)


# --- GossipRouter -----------------------------------------------------------------------------


def router(fanout: int = 3, seed: int = 1) -> GossipRouter:
    return GossipRouter(fanout, SeenCache(1_000, 60_000), random.Random(seed))


PEERS = sorted(f"peer{i:02d}" for i in range(10))


def test_message_id_covers_topic_and_payload():
    assert message_id(1, b"x") == sha256(b"\x01x")
    assert message_id(1, b"x") != message_id(2, b"x") != message_id(2, b"y")


def test_duplicates_are_counted_per_copy():
    r = router()
    assert r.on_receive(2, b"block", 0) == message_id(2, b"block")
    assert r.on_receive(2, b"block", 1) is None
    assert r.on_receive(2, b"block", 2) is None
    assert r.on_receive(1, b"block", 3) == message_id(1, b"block")  # another topic: another message
    assert (r.messages_first, r.messages_duplicate) == (2, 2)
    assert r.duplicates_per_message() == 1.0
    assert r.seen.copies(message_id(2, b"block")) == 3


def test_echoes_of_a_published_message_are_duplicates():
    r = router()
    assert r.publish(1, b"tx", 0) == message_id(1, b"tx")
    assert r.on_receive(1, b"tx", 5) is None
    assert (r.messages_published, r.messages_first, r.messages_duplicate) == (1, 0, 1)
    assert r.duplicates_per_message() == 1.0


def test_no_messages_means_no_duplicates_per_message():
    assert router().duplicates_per_message() == 0.0


@pytest.mark.parametrize("fanout", [1, 3, 6, 9])
def test_targets_respect_the_fanout_and_exclude_the_source(fanout):
    r = router(fanout)
    for source in [None, *PEERS]:
        targets = r.choose_targets(PEERS, source)
        assert len(targets) == min(fanout, len(PEERS) - (source is not None))
        assert source not in targets
        assert len(set(targets)) == len(targets) and set(targets) <= set(PEERS)
        assert targets == sorted(targets)


def test_fewer_peers_than_the_fanout_all_get_it_but_the_source():
    r = router(fanout=6)
    assert r.choose_targets(PEERS[:4], PEERS[1]) == [PEERS[0], PEERS[2], PEERS[3]]
    assert r.choose_targets([], None) == []
    assert r.choose_targets([PEERS[0]], PEERS[0]) == []


def test_targets_are_deterministic_for_a_seed():
    first = [router(seed=7).choose_targets(PEERS, "peer03") for _ in range(3)]
    assert first[0] == first[1] == first[2]
    a, b = router(seed=7), router(seed=7)
    assert [a.choose_targets(PEERS, None) for _ in range(20)] == [b.choose_targets(PEERS, None) for _ in range(20)]


def test_targets_vary_with_the_seed_and_reach_every_peer():
    # A router that always picked the first `fanout` peers would starve the rest.
    picks = [tuple(router(seed=s).choose_targets(PEERS, None)) for s in range(50)]
    assert len(set(picks)) > 10
    assert set().union(*picks) == set(PEERS)


# --- PeerScores ----------------------------------------------------------------------------------

BAN_MS = 60_000


def scores() -> PeerScores:
    return PeerScores(ban_ms=BAN_MS, threshold=-100)


def test_penalties_accumulate_to_a_ban_at_the_threshold():
    s = scores()
    for i in range(4):
        assert s.penalise("n1", Offence.INVALID_TRANSACTION, 1_000, "bad tx") is False
        assert not s.is_banned("n1", 1_000)
    assert s.scores["n1"] == -80
    assert s.penalise("n1", Offence.INVALID_TRANSACTION, 1_000, "bad tx") is True  # -100: at the threshold
    assert s.is_banned("n1", 1_000)
    assert not s.is_banned("n2", 1_000)


def test_mixed_offences_add_up():
    s = scores()
    assert s.penalise("n1", Offence.OVERSIZED_RESPONSE, 0, "big") is False  # -50
    assert s.penalise("n1", Offence.UNSOLICITED_RESPONSE, 0, "unasked") is False  # -75
    assert s.penalise("n1", Offence.REQUEST_TIMEOUT, 0, "slow") is False  # -85
    assert s.penalise("n1", Offence.UNSOLICITED_RESPONSE, 0, "unasked") is True  # -110


@pytest.mark.parametrize("offence", [Offence.MALFORMED_MESSAGE, Offence.INVALID_BLOCK, Offence.INVALID_SIGNATURE,
                                     Offence.BAD_HANDSHAKE])
def test_forgery_is_banned_at_once(offence):
    s = scores()
    assert s.penalise("n1", offence, 0, "forged") is True
    assert s.list_bans(0) == [{"peer": "n1", "until_ms": BAN_MS, "reason": "forged"}]


def test_a_ban_expires_exactly_at_ban_ms_and_the_score_is_forgotten():
    s = scores()
    s.penalise("n1", Offence.MALFORMED_MESSAGE, 10_000, "garbage")
    assert s.is_banned("n1", 10_000 + BAN_MS - 1)
    assert not s.is_banned("n1", 10_000 + BAN_MS)
    assert "n1" not in s.scores and s.list_bans(10_000 + BAN_MS) == []
    # A fresh start: one small offence does not ban again.
    assert s.penalise("n1", Offence.REQUEST_TIMEOUT, 10_000 + BAN_MS, "slow") is False


def test_expire_and_list_bans_drop_expired_bans():
    s = scores()
    s.ban("a", 0, "r1")
    s.ban("b", 30_000, "r2")
    assert [b["peer"] for b in s.list_bans(BAN_MS - 1)] == ["a", "b"]
    assert [b["peer"] for b in s.list_bans(BAN_MS)] == ["b"]
    s.expire(30_000 + BAN_MS)
    assert s.bans == {}


def test_clear_lifts_a_ban_and_resets_the_score():
    s = scores()
    s.penalise("n1", Offence.INVALID_BLOCK, 0, "bad block")
    assert s.clear("n1") is True
    assert not s.is_banned("n1", 1)
    assert "n1" not in s.scores
    assert s.clear("n1") is False  # nothing left to clear
    assert s.penalise("n1", Offence.INVALID_TRANSACTION, 1, "tx") is False


def test_a_ban_again_restarts_the_clock():
    s = scores()
    s.ban("n1", 0, "first")
    s.ban("n1", 50_000, "second")
    assert s.is_banned("n1", BAN_MS + 1)
    assert s.list_bans(BAN_MS + 1) == [{"peer": "n1", "until_ms": 50_000 + BAN_MS, "reason": "second"}]


def test_score_and_ban_records_are_bounded():
    s = PeerScores(ban_ms=BAN_MS, threshold=-100, entries_max=5)
    for i in range(20):
        s.penalise(f"n{i:02d}", Offence.REQUEST_TIMEOUT, i, "slow")
        s.ban(f"b{i:02d}", i, "bad")
        assert len(s.scores) <= 5 and len(s.bans) <= 5
    # The bans kept are the latest (the oldest go first).
    assert sorted(s.bans) == [f"b{i:02d}" for i in range(15, 20)]


# --- OrphanPool -------------------------------------------------------------------------------------


def orphan(tag: str, parent: bytes, height: int = 10) -> Block:
    header = BlockHeader(1, height, parent, 0, sha256(b"tx" + tag.encode()), bytes(32), bytes(20), 0, EMPTY_CONSENSUS_ROOT, bytes(8))
    return Block(header, ())


MISSING = sha256(b"missing parent")
OTHER_MISSING = sha256(b"another missing parent")


def test_add_and_duplicate():
    pool = OrphanPool(blocks_max=4, ttl_ms=1_000)
    b = orphan("a", MISSING)
    assert pool.add(b, "peer1", 0) is True
    assert pool.add(b, "peer2", 1) is False
    assert len(pool) == 1 and b.hash in pool


def test_the_pool_is_bounded_and_evicts_the_oldest():
    pool = OrphanPool(blocks_max=3, ttl_ms=10**9)
    blocks = [orphan(str(i), MISSING if i % 2 else OTHER_MISSING) for i in range(5)]
    for i, b in enumerate(blocks):
        pool.add(b, None, i)
        assert len(pool) <= 3
    assert [b.hash in pool for b in blocks] == [False, False, True, True, True]
    # Evicted orphans are gone from the parent index too.
    released = [o.block for o in pool.take_children(OTHER_MISSING)]
    assert released == sorted([blocks[2], blocks[4]], key=lambda b: b.hash)
    assert [o.block for o in pool.take_children(MISSING)] == [blocks[3]]
    assert len(pool) == 0


def test_take_children_releases_them_in_a_stable_order():
    children = [orphan(str(i), MISSING) for i in range(6)]
    expected = sorted(children, key=lambda b: b.hash)
    for order in (children, children[::-1], random.Random(3).sample(children, len(children))):
        pool = OrphanPool(blocks_max=10, ttl_ms=1_000)
        grandchild = orphan("g", children[0].hash, height=11)
        pool.add(grandchild, "peer", 0)
        for b in order:
            pool.add(b, "peer", 0)
        released = pool.take_children(MISSING)
        assert [o.block for o in released] == expected
        assert all(o.peer == "peer" and o.expires_ms == 1_000 for o in released)
        assert len(pool) == 1 and grandchild.hash in pool  # only the children were taken
        assert pool.take_children(MISSING) == []
        assert [o.block for o in pool.take_children(children[0].hash)] == [grandchild]


def test_root_of_follows_parents_to_the_orphan_whose_parent_is_missing():
    pool = OrphanPool(blocks_max=10, ttl_ms=1_000)
    b1 = orphan("1", MISSING, 11)
    b2 = orphan("2", b1.hash, 12)
    b3 = orphan("3", b2.hash, 13)
    side = orphan("s", b1.hash, 12)
    for b in (b3, side, b2, b1):  # arrival order does not matter
        pool.add(b, None, 0)
    assert pool.root_of(b3.hash).block == b1
    assert pool.root_of(side.hash).block == b1
    assert pool.root_of(b1.hash).block == b1
    # Without its parent in the pool, a block is its own root.
    pool2 = OrphanPool(blocks_max=10, ttl_ms=1_000)
    pool2.add(b3, None, 0)
    assert pool2.root_of(b3.hash).block == b3


def test_orphans_expire_after_their_ttl():
    pool = OrphanPool(blocks_max=10, ttl_ms=1_000)
    old, young = orphan("old", MISSING), orphan("young", MISSING)
    pool.add(old, None, 0)
    pool.add(young, None, 500)
    pool.expire(999)
    assert old.hash in pool and young.hash in pool
    pool.expire(1_000)
    assert old.hash not in pool and young.hash in pool
    # Adding later expires what is due, too.
    pool.add(orphan("late", OTHER_MISSING), None, 1_500)
    assert young.hash not in pool and len(pool) == 1
    assert pool.take_children(MISSING) == []


@settings(max_examples=100, deadline=None)
@given(ops=st.lists(st.tuples(st.integers(min_value=0, max_value=20), st.integers(min_value=0, max_value=5)),
                    max_size=60))
def test_the_parent_index_always_matches_the_pool(ops):
    pool = OrphanPool(blocks_max=5, ttl_ms=30)
    parents = [sha256(b"p%d" % i) for i in range(6)]
    now = 0
    for tag, parent in ops:
        now += 1
        pool.add(orphan(str(tag), parents[parent]), None, now)
        assert len(pool) <= 5
    now += 1
    pool.expire(now)
    released = [o.block.hash for p in parents for o in pool.take_children(p)]
    assert len(released) == len(set(released))
    assert len(pool) == 0, "an orphan in the pool was not reachable through its parent"
