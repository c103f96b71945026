"""Slashing (consensus/pos/slashing.py) and slashing protection (consensus/pos/protection.py).

What is slashable is a vote's FFG link (source checkpoint -> target checkpoint), not
its slot or head: validators attest every slot, with one link per epoch.

What and how:
- The three conditions as truth tables: each row gives two votes (source and target
  checkpoints, head, slot) or two proposals and whether they are a double vote, a
  surround vote, a double proposal. The rows include the near misses that must NOT be
  slashable (the same vote twice, votes of one link that differ only in slot and/or
  head, equal sources, a shared boundary, other slots, other validators) and the
  double votes that differ only in a root (target root, source root); every row is
  also checked with its two sides swapped.
- Evidence checks with real Ed25519 signatures: good evidence names the offender;
  tampered, misattributed, wrong-chain and non-conflicting evidence (per-slot votes of
  one link included) is refused with the rule it broke in the message.
- The detector on gossip sequences: honest traffic (a vote every slot, one link per
  epoch, seen twice) gives nothing and keeps one vote per epoch; one offence (a second
  link for a target epoch) gives exactly one piece of evidence, which then passes the
  evidence check; surrounds are found across many epochs, the window forgets old
  votes, and nothing is reported twice.
- The protection record: its rules one by one (the same link in later slots is
  allowed, another link for the same target epoch is not), encode/decode, and a
  hypothesis property: whatever sequence of signing requests it accepts (with repeated
  links, crashes and reloads in between) contains no slashable pair, and a repeat of
  the last signed link is always accepted. Deliberately lax records show that the
  property can fail.
"""

import itertools
from typing import NamedTuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consensus import codec
from consensus.crypto import KeyPair
from consensus.errors import DecodeError, ValidationError
from consensus.pos.protection import ProtectionRecord, Refused
from consensus.pos.slashing import (
    FUTURE_EPOCHS_MAX,
    InvalidEvidence,
    SlashingDetector,
    check_attester_slashing,
    check_proposer_slashing,
    get_link,
    is_double_proposal,
    is_double_vote,
    is_slashable_attestation_pair,
    is_surround_vote,
)
from consensus.pos.types import (
    Attestation,
    AttestationData,
    AttesterSlashing,
    Checkpoint,
    Proposal,
    ProposerSlashing,
    SignedProposal,
)

CHAIN = "slashing-test"
SLOTS_PER_EPOCH = 4
KEYS = [KeyPair.derive("slashing-test", "validator", i) for i in range(4)]
PUBLIC_KEYS = {i: k.public_key for i, k in enumerate(KEYS)}


def root(label: str) -> bytes:
    return label.encode().ljust(32, b"\x00")


def vote(source: int, target: int, target_root: str = "T", source_root: str = "S", head: str = "H",
         slot: int | None = None) -> AttestationData:
    """A vote source -> target; roots default to fixed labels so only what a row changes differs."""
    return AttestationData(
        slot=target * SLOTS_PER_EPOCH if slot is None else slot,
        head=root(head),
        source=Checkpoint(source, root(source_root)),
        target=Checkpoint(target, root(target_root)),
    )


def attest(validator: int, data: AttestationData, key: KeyPair | None = None, chain: str = CHAIN) -> Attestation:
    key = key or KEYS[validator]
    return Attestation(validator, data, key.sign(data.signing_bytes(chain)))


def propose(validator: int, slot: int, block: str, key: KeyPair | None = None, chain: str = CHAIN) -> SignedProposal:
    key = key or KEYS[validator]
    proposal = Proposal(validator, slot, root(block))
    return SignedProposal(proposal, key.sign(proposal.signing_bytes(chain)))


def tamper(signature: bytes) -> bytes:
    return bytes([signature[0] ^ 1]) + signature[1:]


# --- Truth tables ---

# (id, vote a, vote b, double vote?, surround vote?)
VOTE_TABLE = [
    # Slashable
    ("double: other target root", vote(1, 2, "A"), vote(1, 2, "B"), True, False),
    ("double: other target root, other slots", vote(1, 2, "A", slot=8), vote(1, 2, "B", slot=9), True, False),
    ("double: other target root, same slot and head", vote(1, 2, "A", slot=8, head="X"),
     vote(1, 2, "B", slot=8, head="X"), True, False),
    ("double: other source root, same epochs", vote(1, 2, source_root="P"), vote(1, 2, source_root="Q"), True, False),
    ("double: other source root, other slots and heads", vote(1, 2, source_root="P", slot=8, head="X"),
     vote(1, 2, source_root="Q", slot=10, head="Y"), True, False),
    ("double: other source, same target", vote(0, 2), vote(1, 2), True, False),
    ("double: inner shares the outer target", vote(0, 5), vote(2, 5), True, False),
    ("surround: a surrounds b", vote(1, 4), vote(2, 3), False, True),
    ("surround: b surrounds a", vote(2, 3), vote(1, 4), False, True),
    ("surround: wide span", vote(0, 100), vote(49, 50), False, True),
    ("surround: inner source == inner target", vote(0, 3), vote(1, 1), False, True),
    # Near misses: not slashable
    ("same vote twice", vote(1, 2), vote(1, 2), False, False),
    ("same link, other head only", vote(1, 2, head="X"), vote(1, 2, head="Y"), False, False),
    ("same link, other slot only", vote(1, 2, slot=8), vote(1, 2, slot=9), False, False),
    ("same link, other slot and head", vote(1, 2, slot=8, head="X"), vote(1, 2, slot=11, head="Y"), False, False),
    ("equal sources, targets differ", vote(1, 3), vote(1, 4), False, False),
    ("equal source epochs, b.target < a.target", vote(1, 4), vote(1, 3), False, False),
    ("equal source epochs, other source roots", vote(1, 4, source_root="P"), vote(1, 3, source_root="Q"), False, False),
    ("shared boundary: a.target == b.source", vote(1, 2), vote(2, 3), False, False),
    ("shared boundary, wide spans", vote(0, 5), vote(5, 9), False, False),
    ("consecutive honest votes", vote(3, 4), vote(4, 5), False, False),
    ("disjoint spans", vote(1, 2), vote(3, 4), False, False),
    ("overlapping, not nested", vote(1, 3), vote(2, 4), False, False),
    ("b starts later, ends later", vote(0, 3), vote(1, 5), False, False),
]


@pytest.mark.parametrize(("a", "b", "double", "surround"), [row[1:] for row in VOTE_TABLE],
                         ids=[row[0] for row in VOTE_TABLE])
def test_vote_truth_table(a: AttestationData, b: AttestationData, double: bool, surround: bool) -> None:
    for x, y in ((a, b), (b, a)):  # both conditions are symmetric
        assert is_double_vote(x, y) is double
        assert is_surround_vote(x, y) is surround
        assert is_slashable_attestation_pair(x, y) is (double or surround)


# (id, proposal a, proposal b, double proposal?)
PROPOSAL_TABLE = [
    ("same validator, slot, other blocks", Proposal(1, 7, root("A")), Proposal(1, 7, root("B")), True),
    ("same block in the same slot", Proposal(1, 7, root("A")), Proposal(1, 7, root("A")), False),
    ("other slots, other blocks", Proposal(1, 7, root("A")), Proposal(1, 8, root("B")), False),
    ("other slots, same block", Proposal(1, 7, root("A")), Proposal(1, 8, root("A")), False),
    ("other validators, same slot", Proposal(1, 7, root("A")), Proposal(2, 7, root("B")), False),
]


@pytest.mark.parametrize(("a", "b", "double"), [row[1:] for row in PROPOSAL_TABLE],
                         ids=[row[0] for row in PROPOSAL_TABLE])
def test_proposal_truth_table(a: Proposal, b: Proposal, double: bool) -> None:
    assert is_double_proposal(a, b) is double
    assert is_double_proposal(b, a) is double


def test_tables_cover_both_answers() -> None:
    """Guard against a table that only ever expects one answer."""
    assert {row[3] for row in VOTE_TABLE} == {True, False}
    assert {row[4] for row in VOTE_TABLE} == {True, False}
    assert {row[3] for row in PROPOSAL_TABLE} == {True, False}


# --- Evidence with real signatures ---


def test_good_proposer_slashing_names_the_offender() -> None:
    evidence = ProposerSlashing(propose(2, 9, "A"), propose(2, 9, "B"))
    assert check_proposer_slashing(evidence, CHAIN, PUBLIC_KEYS.get) == 2


@pytest.mark.parametrize(("evidence", "message"), [
    (ProposerSlashing(propose(2, 9, "A"), propose(3, 9, "B")), "two validators, 2 and 3"),
    (ProposerSlashing(propose(2, 9, "A"), propose(2, 10, "B")), "slots 9 and 10 differ"),
    (ProposerSlashing(propose(2, 9, "A"), propose(2, 9, "A")), "the same block"),
    (ProposerSlashing(propose(2, 9, "A"), propose(2, 9, "B", key=KEYS[3])), "proposal b is not signed by validator 2"),
    (ProposerSlashing(propose(2, 9, "A", chain="other"), propose(2, 9, "B")), "proposal a is not signed"),
    (ProposerSlashing(propose(2, 9, "A"), propose(2, 9, "B")._replace(signature=tamper(propose(2, 9, "B").signature))),
     "proposal b is not signed"),
    (ProposerSlashing(propose(2, 9, "A")._replace(proposal=Proposal(2, 9, root("C"))), propose(2, 9, "B")),
     "proposal a is not signed"),
], ids=["two validators", "two slots", "same block", "wrong key", "wrong chain", "tampered signature",
        "tampered block root"])
def test_bad_proposer_slashing_is_refused(evidence: ProposerSlashing, message: str) -> None:
    with pytest.raises(InvalidEvidence, match=message):
        check_proposer_slashing(evidence, CHAIN, PUBLIC_KEYS.get)


def test_proposer_slashing_of_an_unknown_validator_is_refused() -> None:
    evidence = ProposerSlashing(propose(2, 9, "A"), propose(2, 9, "B"))
    with pytest.raises(InvalidEvidence, match="validator 2 is not in the registry"):
        check_proposer_slashing(evidence, CHAIN, {0: KEYS[0].public_key}.get)


@pytest.mark.parametrize(("a", "b"), [
    (vote(1, 2, "A"), vote(1, 2, "B")),
    (vote(1, 2, source_root="P", slot=8), vote(1, 2, source_root="Q", slot=9)),
    (vote(1, 4), vote(2, 3)),
    (vote(2, 3), vote(1, 4)),
], ids=["double vote: target root", "double vote: source root", "surrounding", "surrounded"])
def test_good_attester_slashing_names_the_offender(a: AttestationData, b: AttestationData) -> None:
    evidence = AttesterSlashing(attest(1, a), attest(1, b))
    assert check_attester_slashing(evidence, CHAIN, PUBLIC_KEYS.get) == 1


@pytest.mark.parametrize(("evidence", "message"), [
    (AttesterSlashing(attest(1, vote(1, 2, "A")), attest(2, vote(1, 2, "B"))), "two validators, 1 and 2"),
    (AttesterSlashing(attest(1, vote(1, 2)), attest(1, vote(1, 2))), "the same FFG link"),
    (AttesterSlashing(attest(1, vote(1, 2, slot=8, head="X")), attest(1, vote(1, 2, slot=9, head="Y"))),
     r"the same FFG link 1:53000000->2:54000000 \(slots 8 and 9\)"),
    (AttesterSlashing(attest(1, vote(1, 2)), attest(1, vote(2, 3))), "neither a double vote"),
    (AttesterSlashing(attest(1, vote(1, 4)), attest(1, vote(1, 3))), "neither a double vote"),
    (AttesterSlashing(attest(1, vote(1, 2, "A")), attest(1, vote(1, 2, "B"), key=KEYS[0])),
     "attestation b is not signed by validator 1"),
    (AttesterSlashing(attest(1, vote(1, 2, "A"), chain="other"), attest(1, vote(1, 2, "B"))), "attestation a is not signed"),
    (AttesterSlashing(attest(1, vote(1, 4)), attest(1, vote(2, 3))._replace(signature=tamper(attest(1, vote(2, 3)).signature))),
     "attestation b is not signed"),
    # A valid signature on a different vote: the data was swapped after signing.
    (AttesterSlashing(attest(1, vote(1, 4))._replace(data=vote(0, 4)), attest(1, vote(2, 3))), "attestation a is not signed"),
], ids=["two validators", "same vote", "per-slot votes of one link", "shared boundary", "equal sources", "wrong key", "wrong chain",
        "tampered signature", "swapped data"])
def test_bad_attester_slashing_is_refused(evidence: AttesterSlashing, message: str) -> None:
    with pytest.raises(InvalidEvidence, match=message):
        check_attester_slashing(evidence, CHAIN, PUBLIC_KEYS.get)


def test_attester_slashing_of_an_unknown_validator_is_refused() -> None:
    evidence = AttesterSlashing(attest(3, vote(1, 2, "A")), attest(3, vote(1, 2, "B")))
    with pytest.raises(InvalidEvidence, match="validator 3 is not in the registry"):
        check_attester_slashing(evidence, CHAIN, {1: KEYS[1].public_key}.get)


def test_invalid_evidence_is_a_validation_error() -> None:
    """It takes the verdict channel of bad input (reject the block or the peer)."""
    assert issubclass(InvalidEvidence, ValidationError)


# --- The detector ---


def honest_votes(validators: range, epochs: range) -> list[Attestation]:
    """Each validator votes in every slot, as honest ones do: the head changes slot by
    slot, the link stays the same all epoch (justified epoch e-1 -> target e)."""
    return [attest(v, vote(max(0, e - 1), e, target_root=f"T{e}", source_root=f"T{e - 1}", head=f"H{slot}", slot=slot))
            for e in epochs for slot in range(e * SLOTS_PER_EPOCH, (e + 1) * SLOTS_PER_EPOCH) for v in validators]


def test_honest_traffic_gives_no_evidence_even_when_seen_twice() -> None:
    detector = SlashingDetector(SLOTS_PER_EPOCH, epochs_kept_max=8)
    for epoch in range(20):
        detector.on_epoch(epoch)
        for attestation in honest_votes(range(4), range(epoch, epoch + 1)):
            # Every vote arrives twice: in gossip and again inside a block.
            assert detector.on_attestation(attestation) is None
            assert detector.on_attestation(attestation) is None
        signed = propose(epoch % 4, epoch * SLOTS_PER_EPOCH, f"B{epoch}")
        assert detector.on_proposal(signed) is None
        assert detector.on_proposal(signed) is None


def test_per_slot_votes_of_one_link_give_no_evidence_and_keep_one_vote() -> None:
    detector = SlashingDetector(SLOTS_PER_EPOCH, epochs_kept_max=8)
    detector.on_epoch(3)
    # Validator 1's votes of epoch 3, one per slot, each with another head, in any order.
    votes = [attest(1, vote(2, 3, "T3", "T2", head=f"H{slot}", slot=slot)) for slot in range(12, 16)]
    for attestation in votes + votes[1:][::-1]:
        assert detector.on_attestation(attestation) is None
    assert detector.stored_count() == 1
    # A second link for target epoch 3 is caught against the vote kept for the link: the first seen.
    rival = attest(1, vote(2, 3, "rival", "T2", slot=15))
    evidence = detector.on_attestation(rival)
    assert evidence == AttesterSlashing(votes[0], rival)
    assert check_attester_slashing(evidence, CHAIN, PUBLIC_KEYS.get) == 1


# A second link for target epoch 6 beside the honest T5@5 -> T6@6, by what differs.
RIVAL_LINKS = {
    "other target root": vote(5, 6, target_root="rival", source_root="T5"),
    "other source root, same epochs": vote(5, 6, target_root="T6", source_root="rival"),
    "other source epoch": vote(4, 6, target_root="T6", source_root="T4"),
}


@pytest.mark.parametrize("rival_first", [False, True])
@pytest.mark.parametrize("rival_link", RIVAL_LINKS.values(), ids=RIVAL_LINKS.keys())
def test_a_second_link_for_a_target_epoch_gives_exactly_one_evidence(rival_link: AttestationData,
                                                                     rival_first: bool) -> None:
    detector = SlashingDetector(SLOTS_PER_EPOCH, epochs_kept_max=8)
    found = []
    for epoch in range(10):
        detector.on_epoch(epoch)
        traffic = honest_votes(range(4), range(epoch, epoch + 1))
        if epoch == 6:  # validator 2 also votes the rival link in every slot of epoch 6, and resends it
            rivals = [attest(2, rival_link._replace(slot=slot, head=root(f"R{slot}")))
                      for slot in range(6 * SLOTS_PER_EPOCH, 7 * SLOTS_PER_EPOCH)]
            traffic = rivals + traffic + rivals if rival_first else traffic + rivals + traffic
        found += [e for e in map(detector.on_attestation, traffic) if e is not None]
    assert len(found) == 1
    assert check_attester_slashing(found[0], CHAIN, PUBLIC_KEYS.get) == 2
    assert is_double_vote(found[0].a.data, found[0].b.data)


def test_a_double_proposal_gives_exactly_one_evidence() -> None:
    detector = SlashingDetector(SLOTS_PER_EPOCH, epochs_kept_max=8)
    a, b, c = propose(1, 5, "A"), propose(1, 5, "B"), propose(1, 5, "C")
    other = propose(2, 5, "D")  # another validator in the same slot (a fork, not an offence of 1)
    results = [detector.on_proposal(p) for p in (a, other, a, b, b, a, c, other)]
    found = [r for r in results if r is not None]
    assert found == [ProposerSlashing(a, b)]
    assert check_proposer_slashing(found[0], CHAIN, PUBLIC_KEYS.get) == 1


@pytest.mark.parametrize("surrounding_first", [False, True])
def test_surround_is_detected_across_many_epochs(surrounding_first: bool) -> None:
    detector = SlashingDetector(SLOTS_PER_EPOCH, epochs_kept_max=64)
    inner, outer = attest(3, vote(5, 6)), attest(3, vote(4, 50))
    first, second = (outer, inner) if surrounding_first else (inner, outer)
    detector.on_epoch(first.data.target.epoch)
    assert detector.on_attestation(first) is None
    for epoch in range(first.data.target.epoch + 1, 51):
        detector.on_epoch(epoch)
        for attestation in honest_votes(range(3), range(epoch, epoch + 1)):  # others keep voting
            assert detector.on_attestation(attestation) is None
    evidence = detector.on_attestation(second)
    assert evidence == AttesterSlashing(first, second)
    assert check_attester_slashing(evidence, CHAIN, PUBLIC_KEYS.get) == 3


def test_votes_older_than_the_window_are_forgotten() -> None:
    """The documented limit: a surround of a vote that left the window is not detected."""
    detector = SlashingDetector(SLOTS_PER_EPOCH, epochs_kept_max=8)
    detector.on_epoch(6)
    assert detector.on_attestation(attest(3, vote(5, 6))) is None
    detector.on_epoch(13)  # epoch 6 is the oldest kept: floor = 13 - 8 + 1
    assert detector.floor_epoch() == 6
    assert detector.stored_count() == 1
    detector.on_epoch(14)  # and now it is gone
    assert detector.stored_count() == 0
    assert detector.on_attestation(attest(3, vote(4, 14))) is None


def test_the_window_bounds_memory() -> None:
    """A vote every slot, yet one vote per validator and epoch is kept (plus the proposals)."""
    window, validators = 8, 4
    detector = SlashingDetector(SLOTS_PER_EPOCH, epochs_kept_max=window)
    for epoch in range(200):
        detector.on_epoch(epoch)
        for attestation in honest_votes(range(validators), range(epoch, epoch + 1)):
            detector.on_attestation(attestation)
        for slot in range(epoch * SLOTS_PER_EPOCH, (epoch + 1) * SLOTS_PER_EPOCH):
            detector.on_proposal(propose(slot % validators, slot, f"B{slot}"))
        assert detector.stored_count() <= window * (validators + SLOTS_PER_EPOCH)
    assert detector.stored_count() == window * (validators + SLOTS_PER_EPOCH)


def test_messages_outside_the_window_are_ignored() -> None:
    detector = SlashingDetector(SLOTS_PER_EPOCH, epochs_kept_max=4)
    detector.on_epoch(10)
    far = 10 + FUTURE_EPOCHS_MAX + 1
    # Too old and too far ahead: never stored, so never part of evidence.
    for data in (vote(5, 6, "A"), vote(5, 6, "B"), vote(5, far, "A"), vote(5, far, "B")):
        assert detector.on_attestation(attest(0, data)) is None
    for block in ("A", "B"):
        assert detector.on_proposal(propose(0, 6 * SLOTS_PER_EPOCH, block)) is None
        assert detector.on_proposal(propose(0, far * SLOTS_PER_EPOCH, block)) is None
    assert detector.stored_count() == 0
    # One epoch ahead is accepted (clock disparity).
    assert detector.on_attestation(attest(0, vote(9, 11, "A"))) is None
    assert detector.on_attestation(attest(0, vote(9, 11, "B"))) is not None


def test_the_window_never_moves_backwards() -> None:
    detector = SlashingDetector(SLOTS_PER_EPOCH, epochs_kept_max=4)
    detector.on_epoch(10)
    detector.on_epoch(3)
    assert detector.epoch == 10


def test_an_offender_is_reported_once_whatever_else_it_signs() -> None:
    detector = SlashingDetector(SLOTS_PER_EPOCH, epochs_kept_max=16)
    detector.on_epoch(10)
    conflicting = [attest(1, vote(1, 2, "A")), attest(1, vote(1, 2, "B")), attest(1, vote(0, 9)),
                   attest(1, vote(1, 2, "C")), attest(1, vote(3, 4))]
    found = []
    for order in (conflicting, conflicting[::-1], conflicting):
        found += [e for e in map(detector.on_attestation, order) if e is not None]
    found += [e for e in map(detector.on_proposal, (propose(1, 20, "A"), propose(1, 20, "B"))) if e is not None]
    assert len(found) == 1


def test_an_offender_slashed_by_others_is_ignored() -> None:
    detector = SlashingDetector(SLOTS_PER_EPOCH, epochs_kept_max=16)
    assert detector.on_attestation(attest(1, vote(0, 1, "A"))) is None
    detector.mark_slashed(1)  # evidence against 1 arrived in a block
    assert detector.stored_count() == 0
    assert detector.on_attestation(attest(1, vote(0, 1, "B"))) is None
    assert detector.on_proposal(propose(1, 3, "A")) is None
    assert detector.on_proposal(propose(1, 3, "B")) is None


# --- Slashing protection ---

KEY = KEYS[0].public_key


def link(source: int, target: int, target_root: str = "T", source_root: str = "S") -> tuple[Checkpoint, Checkpoint]:
    """The FFG link (source, target) that vote() with the same arguments carries."""
    data = vote(source, target, target_root, source_root)
    return data.source, data.target


def test_protection_proposals_need_a_higher_slot() -> None:
    record = ProtectionRecord.empty(CHAIN, KEY).record_proposal(0)
    with pytest.raises(Refused, match="already proposed at slot 0"):
        record.check_proposal(0)
    record = record.record_proposal(5)
    for slot in (0, 4, 5):
        with pytest.raises(Refused, match="already proposed at slot 5"):
            record.record_proposal(slot)
    assert record.record_proposal(6).last_proposal_slot == 6
    assert record.last_proposal_slot == 5  # records are values: the old one is unchanged


@pytest.mark.parametrize(("new", "message"), [
    (link(3, 4, target_root="B"), "already attested to target epoch 4 with link 3:53000000->4:54000000"),
    (link(3, 4, source_root="P"), "already attested to target epoch 4 with link"),
    (link(2, 4), "already attested to target epoch 4 with link"),  # another source epoch, same target
    (link(3, 3), r"already attested to target epoch 4 \("),  # an older target
    (link(2, 5), "already attested from source epoch 3"),  # would surround 3->4
    (link(4, 3), "source after target"),
], ids=["other target root", "other source root", "other source epoch", "older target", "surrounding",
        "source after target"])
def test_protection_refuses_votes_that_could_conflict(new: tuple[Checkpoint, Checkpoint], message: str) -> None:
    record = ProtectionRecord.empty(CHAIN, KEY).record_attestation(*link(3, 4))
    with pytest.raises(Refused, match=message):
        record.check_attestation(*new)
    with pytest.raises(Refused, match=message):
        record.record_attestation(*new)


def test_protection_allows_the_same_link_in_every_slot_of_the_epoch() -> None:
    record = ProtectionRecord.empty(CHAIN, KEY).record_attestation(*link(3, 4))
    for _ in range(SLOTS_PER_EPOCH - 1):  # the votes of the later slots of epoch 4
        assert record.record_attestation(*link(3, 4)) == record
        record = ProtectionRecord.decode(record.encode())  # crash and reload in between
    # Once a later link is signed, the old one is refused: it is no longer the last.
    record = record.record_attestation(*link(4, 5))
    assert record.record_attestation(*link(4, 5)) == record
    with pytest.raises(Refused, match="already attested to target epoch 5"):
        record.check_attestation(*link(3, 4))


@pytest.mark.parametrize("new", [link(3, 5), link(3, 5, source_root="P"), link(4, 5), link(4, 9), link(9, 9)],
                         ids=["3->5", "3->5 other source root", "4->5", "4->9", "9->9"])
def test_protection_allows_later_votes(new: tuple[Checkpoint, Checkpoint]) -> None:
    record = ProtectionRecord.empty(CHAIN, KEY).record_attestation(*link(3, 4)).record_attestation(*new)
    assert (record.last_source, record.last_target) == new


def test_protection_fresh_record_allows_anything_sane() -> None:
    record = ProtectionRecord.empty(CHAIN, KEY)
    record.check_proposal(0)
    record.check_attestation(*link(0, 0))  # genesis: source and target are both epoch 0


def test_protection_record_round_trips() -> None:
    for record in (ProtectionRecord.empty(CHAIN, KEY),
                   ProtectionRecord.empty(CHAIN, KEY).record_proposal(7).record_attestation(*link(2, 3))):
        data = record.encode()
        assert codec.decode(data)[0] == "chainlab/protection/v2"
        assert ProtectionRecord.decode(data) == record
        assert ProtectionRecord.decode(data).encode() == data


TAG = "chainlab/protection/v2"
R = root("R")


@pytest.mark.parametrize("data", [
    b"",
    b"\xc1",
    ProtectionRecord.empty(CHAIN, KEY).encode()[:-1],
    codec.encode(["chainlab/other/v1", CHAIN, KEY, None, None, None]),
    codec.encode(["chainlab/protection/v1", CHAIN, KEY, None, 2, 3]),
    codec.encode(["chainlab/protection/v1", CHAIN, KEY, None, [2, R], [3, R]]),
    codec.encode([TAG, CHAIN, KEY, None, None, None, None]),
    codec.encode([TAG, CHAIN, KEY[:31], None, None, None]),
    codec.encode([TAG, CHAIN, KEY, -1, None, None]),
    codec.encode([TAG, CHAIN, KEY, None, [3, R], None]),
    codec.encode([TAG, CHAIN, KEY, None, None, [3, R]]),
    codec.encode([TAG, CHAIN, KEY, None, [5, R], [4, R]]),
    codec.encode([TAG, CHAIN, KEY, None, [3, R[:31]], [4, R]]),
    codec.encode([TAG, CHAIN, KEY, None, [3, R], [4, R + b"\x00"]]),
    codec.encode([TAG, CHAIN, KEY, None, [3, R, 0], [4, R]]),
    codec.encode([TAG, CHAIN, KEY, None, 3, [4, R]]),
    codec.encode([TAG, CHAIN, KEY, None, [-3, R], [4, R]]),
    codec.encode([TAG, CHAIN, KEY, None, [3, R], [True, R]]),
], ids=["empty", "reserved byte", "truncated", "wrong tag", "v1 record", "v1 tag, v2 layout", "extra field", "short key",
        "negative slot", "half link: source only", "half link: target only", "source after target",
        "short root", "long root", "checkpoint with 3 fields", "checkpoint not an array", "negative epoch",
        "boolean epoch"])
def test_protection_record_decode_refuses_bad_bytes(data: bytes) -> None:
    with pytest.raises(DecodeError):
        ProtectionRecord.decode(data)


# A signing request:
# ("proposal", slot, block label);
# ("attestation", source epoch, target epoch, source root label, target root label, slot in the epoch, head label);
# ("repeat", of_last_signed, slot in the epoch, head label): the link of the last signed attestation (True)
#   or of the last requested one (False) again, in another slot with another head: the per-slot vote.
proposal_requests = st.tuples(st.just("proposal"), st.integers(0, 12), st.sampled_from("AB"))
attestation_requests = st.tuples(st.just("attestation"), st.integers(0, 8), st.integers(0, 8), st.sampled_from("PQ"),
                                 st.sampled_from("AB"), st.integers(0, SLOTS_PER_EPOCH - 1), st.sampled_from("XY"))
repeat_requests = st.tuples(st.just("repeat"), st.booleans(), st.integers(0, SLOTS_PER_EPOCH - 1),
                            st.sampled_from("XY"))
requests = st.lists(st.tuples(st.one_of(proposal_requests, attestation_requests, repeat_requests), st.booleans()),
                    max_size=40)


class Signed(NamedTuple):
    proposals: list[Proposal]
    votes: list[AttestationData]
    refused_repeats: int  # requests for the last signed link again that were refused


def sign_all(record: ProtectionRecord, steps: list) -> Signed:
    """Ask the record about every request; keep what it accepts. The boolean of a step
    simulates a crash after it: the record is reloaded from its persisted bytes."""
    proposals, votes, refused_repeats = [], [], 0
    last_signed: AttestationData | None = None
    last_requested: AttestationData | None = None
    for request, crash in steps:
        if request[0] == "proposal":
            _, slot, block = request
            try:
                record = record.record_proposal(slot)
                proposals.append(Proposal(0, slot, root(block)))
            except Refused:
                pass
        else:
            if request[0] == "attestation":
                _, source, target, source_label, target_label, offset, head = request
                data = vote(source, target, target_label, source_label)
            else:
                _, of_last_signed, offset, head = request
                earlier = last_signed if of_last_signed else last_requested
                if earlier is None:
                    continue
                data = earlier
            data = data._replace(slot=data.target.epoch * SLOTS_PER_EPOCH + offset, head=root(head))
            last_requested = data
            try:
                record = record.record_attestation(data.source, data.target)
                votes.append(data)
                last_signed = data
            except Refused:
                if last_signed is not None and get_link(data) == get_link(last_signed):
                    refused_repeats += 1
        if crash:  # (type(record): a broken record under test reloads as itself)
            record = type(record).decode(record.encode())
    return Signed(proposals, votes, refused_repeats)


def slashable_pairs(signed: Signed) -> list[tuple]:
    pairs: list[tuple] = [(a, b) for a, b in itertools.combinations(signed.proposals, 2) if is_double_proposal(a, b)]
    pairs += [(a, b) for a, b in itertools.combinations(signed.votes, 2)
              if is_double_vote(a, b) or is_surround_vote(a, b)]
    return pairs


@settings(max_examples=400, deadline=None)
@given(requests)
def test_protection_never_signs_a_slashable_pair(steps: list) -> None:
    signed = sign_all(ProtectionRecord.empty(CHAIN, KEY), steps)
    assert slashable_pairs(signed) == []
    assert signed.refused_repeats == 0  # and it never stops a validator voting its link each slot


def test_protection_signs_per_slot_votes_across_crashes() -> None:
    """A fixed run of the property's machinery: one link in every slot of two epochs."""
    steps = [(("attestation", 3, 4, "P", "A", 0, "X"), True), (("repeat", True, 1, "Y"), False),
             (("repeat", False, 2, "X"), True), (("repeat", True, 3, "Y"), True),
             (("attestation", 4, 5, "A", "B", 0, "X"), False), (("repeat", True, 1, "Y"), True),
             (("attestation", 3, 4, "P", "A", 3, "X"), False)]  # the old link, now refused
    signed = sign_all(ProtectionRecord.empty(CHAIN, KEY), steps)
    assert [(v.slot, v.target.epoch) for v in signed.votes] == [(16, 4), (17, 4), (18, 4), (19, 4), (20, 5), (21, 5)]
    assert slashable_pairs(signed) == [] and signed.refused_repeats == 0


class SourceBlindRecord(ProtectionRecord):
    """A broken record that forgets the source rule: it would sign a surrounding vote."""

    def check_attestation(self, source: Checkpoint, target: Checkpoint) -> None:
        if (source, target) == (self.last_source, self.last_target):
            return
        if self.last_target is not None and target.epoch <= self.last_target.epoch:
            raise Refused("older target")


class EpochsOnlyRecord(ProtectionRecord):
    """A broken record that compares epochs only: it takes another link with the same
    epochs for the per-slot repeat of the last one, and would sign a double vote."""

    def check_attestation(self, source: Checkpoint, target: Checkpoint) -> None:
        if self.last_source is None or self.last_target is None:
            return
        if (source.epoch, target.epoch) == (self.last_source.epoch, self.last_target.epoch):
            return
        if target.epoch <= self.last_target.epoch or source.epoch < self.last_source.epoch:
            raise Refused("older link")


class RepeatRefusingRecord(ProtectionRecord):
    """A record as strict as v1's watermarks: it refuses the last link again."""

    def check_attestation(self, source: Checkpoint, target: Checkpoint) -> None:
        if self.last_target is not None and (source, target) == (self.last_source, self.last_target):
            raise Refused("already signed")
        super().check_attestation(source, target)


FIRST = ("attestation", 3, 4, "P", "A", 0, "X")  # P@3 -> A@4 in the first slot of epoch 4


@pytest.mark.parametrize(("broken", "steps", "what"), [
    (SourceBlindRecord, [(FIRST, False), (("attestation", 2, 5, "P", "A", 0, "X"), False)], "slashable"),
    (EpochsOnlyRecord, [(FIRST, True), (("attestation", 3, 4, "P", "B", 1, "X"), False)], "slashable"),
    (EpochsOnlyRecord, [(FIRST, False), (("attestation", 3, 4, "Q", "A", 1, "X"), False)], "slashable"),
    (RepeatRefusingRecord, [(FIRST, True), (("repeat", True, 1, "Y"), False)], "refused repeat"),
], ids=["source rule forgotten", "target root ignored", "source root ignored", "repeat refused"])
def test_the_property_can_fail(broken: type[ProtectionRecord], steps: list, what: str) -> None:
    """The checker above is not vacuous: each broken record fails it on a short run,
    which the real record passes."""
    signed = sign_all(broken(*ProtectionRecord.empty(CHAIN, KEY)), steps)
    if what == "slashable":
        assert slashable_pairs(signed) != []
    else:
        assert signed.refused_repeats > 0
    good = sign_all(ProtectionRecord.empty(CHAIN, KEY), steps)
    assert slashable_pairs(good) == [] and good.refused_repeats == 0
