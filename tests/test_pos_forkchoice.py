"""LMD-GHOST fork choice (consensus/pos/forkchoice.py): scenarios, unit tests, a reference.

How: every tests/forkchoice/*.json scenario (the consensus-spec-tests fork choice
format, simplified: block, attestation, justified, finalized, equivocation, balances,
tick and checks steps) is replayed step by step into the store and, beside it, into
`ReferenceStore`, the rule written for reading: every weight recomputed from scratch,
the head found by walking from the justified block. Checks compare against the
scenario's expected values and, at every checks step, the store's head against the
reference's. A hypothesis test drives both with random trees, votes, stakes,
equivocations and checkpoints, and unit tests pin the errors and edge cases.
"""

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings, strategies as st

from consensus.crypto import sha256
from consensus.errors import InvalidBlock, ValidationError
from consensus.pos.forkchoice import (
    ConflictingCheckpoint,
    ForkChoice,
    UnknownBlock,
    checkpoint_root,
)
from consensus.pos.types import Checkpoint

SCENARIO_DIR = Path(__file__).parent / "forkchoice"
SCENARIOS = sorted(SCENARIO_DIR.glob("*.json"))


def root_of(name: str) -> bytes:
    """Scenario names stand for 32-byte roots; "genesis" is named like any other."""
    return sha256(name.encode())


GENESIS = root_of("genesis")


class ReferenceStore:
    """The fork choice rule as the consensus-specs write it, for ease of understanding
    rather than speed: no caches, every weight summed afresh from the latest messages."""

    def __init__(self, genesis_root: bytes, genesis_slot: int = 0):
        self.blocks: dict[bytes, tuple[bytes | None, int]] = {genesis_root: (None, genesis_slot)}
        self.latest: dict[int, tuple[int, bytes]] = {}
        self.equivocators: set[int] = set()
        self.balances: dict[int, int] = {}
        self.justified = Checkpoint(0, genesis_root)
        self.finalized = Checkpoint(0, genesis_root)

    def on_block(self, root: bytes, parent: bytes, slot: int) -> None:
        if root in self.blocks:
            return
        if parent not in self.blocks:
            raise UnknownBlock("unknown parent")
        self.blocks[root] = (parent, slot)

    def on_attestation(self, validator: int, target_epoch: int, head: bytes) -> bool:
        if head not in self.blocks or validator in self.equivocators:
            return False
        if validator in self.latest and target_epoch <= self.latest[validator][0]:
            return False
        self.latest[validator] = (target_epoch, head)
        return True

    def on_equivocation(self, validator: int) -> None:
        self.equivocators.add(validator)

    def set_balances(self, balances: dict[int, int]) -> None:
        self.balances = dict(balances)

    def set_justified(self, checkpoint: Checkpoint) -> None:
        if checkpoint.root not in self.blocks:
            raise UnknownBlock("unknown justified root")
        self.justified = checkpoint

    def set_finalized(self, checkpoint: Checkpoint) -> None:
        if checkpoint.root not in self.blocks:
            raise UnknownBlock("unknown finalized root")
        # A finalized checkpoint is justified: it replaces an older justified one, or
        # one whose block would be pruned (the tests never make them conflict).
        if self.justified.epoch < checkpoint.epoch or not self.is_descendant(checkpoint.root, self.justified.root):
            self.justified = checkpoint
        self.blocks = {r: v for r, v in self.blocks.items() if self.is_descendant(checkpoint.root, r)}
        self.blocks[checkpoint.root] = (None, self.blocks[checkpoint.root][1])
        self.finalized = checkpoint

    def is_descendant(self, ancestor: bytes, root: bytes) -> bool:
        node: bytes | None = root
        while node is not None and node in self.blocks:
            if node == ancestor:
                return True
            node = self.blocks[node][0]
        return False

    def weight(self, root: bytes) -> int:
        return sum(
            self.balances.get(validator, 0)
            for validator, (_, head) in self.latest.items()
            if validator not in self.equivocators and head in self.blocks and self.is_descendant(root, head)
        )

    def head(self) -> bytes:
        head = self.justified.root
        while True:
            children = [r for r, (parent, _) in self.blocks.items() if parent == head]
            if not children:
                return head
            head = max(children, key=lambda r: (self.weight(r), r))


# ---------------------------------------------------------------- scenarios


def stakes(raw: dict[str, int]) -> dict[int, int]:
    return {int(validator): stake for validator, stake in raw.items()}


def run_scenario(scenario: dict[str, Any]) -> None:
    fc = ForkChoice(GENESIS)
    reference = ReferenceStore(GENESIS)
    fc.set_balances(stakes(scenario["balances"]))
    reference.set_balances(stakes(scenario["balances"]))
    slots_per_epoch = scenario.get("slots_per_epoch")
    for number, step in enumerate(scenario["steps"]):
        where = f"step {number}: {json.dumps(step)}"
        valid = step.get("valid", True)
        kinds = set(step) - {"valid"}
        assert len(kinds) == 1, f"{where}: one kind of step at a time"
        kind = kinds.pop()
        body = step[kind]
        if kind == "block":
            args = (root_of(body["root"]), root_of(body["parent"]), body["slot"])
            if valid:
                fc.on_block(*args)
                reference.on_block(*args)
            else:
                with pytest.raises(ValidationError):
                    fc.on_block(*args)
                assert args[0] not in fc, where
        elif kind == "attestation":
            args = (body["validator"], body["target_epoch"], root_of(body["head"]))
            assert fc.on_attestation(*args) is valid, where
            assert reference.on_attestation(*args) is valid, f"{where} (reference)"
        elif kind in ("justified", "finalized"):
            checkpoint = Checkpoint(body["epoch"], root_of(body["root"]))
            if valid:
                getattr(fc, f"set_{kind}")(checkpoint)
                getattr(reference, f"set_{kind}")(checkpoint)
            else:
                with pytest.raises(ValidationError):
                    getattr(fc, f"set_{kind}")(checkpoint)
        elif kind == "equivocation":
            fc.on_equivocation(body)
            reference.on_equivocation(body)
        elif kind == "balances":
            fc.set_balances(stakes(body))
            reference.set_balances(stakes(body))
        elif kind == "tick":
            pass  # informational: this store takes no time (no proposer boost)
        elif kind == "checks":
            run_checks(fc, reference, body, slots_per_epoch, where)
        else:
            raise AssertionError(f"{where}: unknown step kind {kind!r}")


def run_checks(fc: ForkChoice, reference: ReferenceStore, checks: dict[str, Any],
               slots_per_epoch: int | None, where: str) -> None:
    unknown_checks = set(checks) - {"head", "weights", "known", "unknown", "checkpoints"}
    assert not unknown_checks, f"{where}: unknown checks {unknown_checks}"
    assert fc.head() == reference.head(), f"{where}: store and reference disagree"
    if "head" in checks:
        assert fc.head() == root_of(checks["head"]), f"{where}: head"
    for name, weight in checks.get("weights", {}).items():
        assert fc.weight(root_of(name)) == weight, f"{where}: weight of {name}"
        assert reference.weight(root_of(name)) == weight, f"{where}: reference weight of {name}"
    for name in checks.get("known", []):
        assert root_of(name) in fc, f"{where}: {name} should be known"
    for name in checks.get("unknown", []):
        assert root_of(name) not in fc, f"{where}: {name} should be unknown"
    for expected in checks.get("checkpoints", []):
        assert slots_per_epoch is not None, f"{where}: checkpoints need slots_per_epoch"
        got = checkpoint_root(fc, root_of(expected["head"]), expected["epoch"], slots_per_epoch)
        assert got == root_of(expected["root"]), f"{where}: checkpoint {expected}"


def test_there_are_enough_scenarios() -> None:
    assert len(SCENARIOS) >= 10


@pytest.mark.parametrize("path", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_scenario(path: Path) -> None:
    scenario = json.loads(path.read_text())
    assert scenario["description"]
    run_scenario(scenario)


# ---------------------------------------------------------------- unit tests


def make_fork() -> ForkChoice:
    """genesis(0) -> a(1) -> a2(2); genesis -> b(1)."""
    fc = ForkChoice(GENESIS)
    fc.on_block(root_of("a"), GENESIS, 1)
    fc.on_block(root_of("a2"), root_of("a"), 2)
    fc.on_block(root_of("b"), GENESIS, 1)
    return fc


def test_block_with_unknown_parent_is_refused_and_not_stored() -> None:
    fc = make_fork()
    with pytest.raises(UnknownBlock):
        fc.on_block(root_of("x"), root_of("nowhere"), 5)
    assert root_of("x") not in fc and len(fc) == 4


def test_duplicate_block_is_a_no_op() -> None:
    fc = make_fork()
    head = fc.head()
    fc.on_block(root_of("a"), GENESIS, 1)
    assert len(fc) == 4 and fc.head() == head


def test_block_slot_must_follow_its_parent() -> None:
    fc = make_fork()
    with pytest.raises(InvalidBlock):
        fc.on_block(root_of("x"), root_of("a2"), 2)


def test_attestation_results() -> None:
    fc = make_fork()
    fc.set_balances({0: 5})
    assert fc.on_attestation(0, 1, root_of("b")) is True
    assert fc.on_attestation(0, 1, root_of("a")) is False  # first seen wins at an equal epoch
    assert fc.on_attestation(0, 2, root_of("unknown")) is False  # not stored
    assert fc.latest_message(0) == (1, root_of("b"))
    assert fc.on_attestation(0, 2, root_of("b")) is True  # a newer epoch, same head
    assert fc.weight(root_of("b")) == 5
    fc.on_equivocation(0)
    fc.on_equivocation(0)  # idempotent
    assert fc.latest_message(0) is None
    assert fc.on_attestation(0, 9, root_of("a")) is False
    assert fc.weight(GENESIS) == 0


def test_unknown_roots_in_queries() -> None:
    fc = make_fork()
    with pytest.raises(UnknownBlock):
        fc.weight(root_of("x"))
    with pytest.raises(UnknownBlock):
        fc.set_justified(Checkpoint(1, root_of("x")))
    with pytest.raises(UnknownBlock):
        fc.set_finalized(Checkpoint(1, root_of("x")))
    assert not fc.is_descendant(root_of("x"), root_of("a"))
    assert not fc.is_descendant(root_of("a"), root_of("x"))


def test_is_descendant() -> None:
    fc = make_fork()
    assert fc.is_descendant(GENESIS, root_of("a2"))
    assert fc.is_descendant(root_of("a"), root_of("a2"))
    assert fc.is_descendant(root_of("a"), root_of("a"))
    assert not fc.is_descendant(root_of("a2"), root_of("a"))
    assert not fc.is_descendant(root_of("b"), root_of("a2"))


def test_finality_conflicts_are_refused() -> None:
    fc = make_fork()
    fc.set_justified(Checkpoint(1, root_of("a")))
    with pytest.raises(ConflictingCheckpoint):
        fc.set_finalized(Checkpoint(1, root_of("b")))  # off the justified branch
    fc.set_finalized(Checkpoint(1, root_of("a")))
    with pytest.raises(ConflictingCheckpoint):
        fc.set_finalized(Checkpoint(0, root_of("a2")))  # finality going back
    with pytest.raises(ConflictingCheckpoint):
        fc.set_justified(Checkpoint(0, root_of("a2")))  # justified older than finalized
    assert fc.finalized == Checkpoint(1, root_of("a"))


def test_finalizing_past_the_justified_block_moves_the_start_there() -> None:
    fc = make_fork()
    fc.set_finalized(Checkpoint(2, root_of("a2")))
    assert fc.justified == Checkpoint(2, root_of("a2"))
    assert fc.head() == root_of("a2") and len(fc) == 1
    assert fc.parent(root_of("a2")) is None


def test_an_older_justified_checkpoint_on_another_branch_gives_way_to_finality() -> None:
    fc = make_fork()
    fc.set_justified(Checkpoint(1, root_of("b")))
    fc.set_finalized(Checkpoint(2, root_of("a")))
    assert fc.justified == Checkpoint(2, root_of("a"))
    assert root_of("b") not in fc and fc.head() == root_of("a2")


def test_checkpoint_root_below_the_finalized_block_is_unknown() -> None:
    fc = make_fork()
    fc.set_finalized(Checkpoint(1, root_of("a")))
    with pytest.raises(UnknownBlock):
        checkpoint_root(fc, root_of("a2"), 0, 4)
    assert checkpoint_root(fc, root_of("a2"), 1, 1) == root_of("a")
    assert checkpoint_root(fc, root_of("a2"), 1, 2) == root_of("a2")


def test_vote_on_a_pruned_block_keeps_its_epoch_but_no_weight() -> None:
    fc = make_fork()
    fc.set_balances({0: 7, 1: 3})
    assert fc.on_attestation(0, 3, root_of("b"))
    assert fc.on_attestation(1, 1, root_of("a2"))
    assert fc.head() == root_of("b")
    fc.set_finalized(Checkpoint(1, root_of("a")))
    assert fc.weight(root_of("a")) == 3 and fc.head() == root_of("a2")
    # Its latest message still has epoch 3: an older vote on the live branch cannot replace it.
    assert fc.on_attestation(0, 2, root_of("a2")) is False
    assert fc.on_attestation(0, 4, root_of("a2")) is True
    assert fc.weight(root_of("a")) == 10


def test_head_at_scale_follows_the_rule() -> None:
    """2,000 blocks in a few branches and 64 validators: too big for the naive reference,
    so check the rule locally: on the path from the justified block each step takes the
    heaviest child (greater root on a tie), and the head is a leaf."""
    fc = ForkChoice(GENESIS)
    children: dict[bytes, list[bytes]] = {GENESIS: []}
    roots = [GENESIS]
    slots = {GENESIS: 0}
    for i in range(1, 2_000):
        # Mostly extend the newest block, sometimes fork off one ten to fifty back.
        parent = roots[-1] if i % 37 else roots[max(0, len(roots) - 10 - i % 41)]
        root = root_of(f"n{i}")
        fc.on_block(root, parent, slots[parent] + 1 + i % 3)
        slots[root] = slots[parent] + 1 + i % 3
        children[parent].append(root)
        children[root] = []
        roots.append(root)
    fc.set_balances({v: 32 + v for v in range(64)})
    for v in range(64):
        assert fc.on_attestation(v, 1, roots[(v * 997) % len(roots)])
    assert fc.weight(GENESIS) == sum(32 + v for v in range(64))
    node = GENESIS
    while children[node]:
        best = max(children[node], key=lambda r: (fc.weight(r), r))
        assert fc.is_descendant(best, fc.head())
        node = best
    assert node == fc.head()


# ---------------------------------------------------------------- property test


OPERATIONS = st.lists(
    st.tuples(
        st.sampled_from(["block", "block", "block", "vote", "vote", "vote", "equivocate", "balances",
                         "justify", "finalize", "head"]),  # "head": only the check after each step
        st.integers(min_value=0, max_value=10**6),
        st.integers(min_value=0, max_value=10**6),
        st.integers(min_value=0, max_value=3),
    ),
    max_size=80,
)


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=1, max_value=8), OPERATIONS)
def test_store_matches_the_reference(validators: int, operations: list[tuple[str, int, int, int]]) -> None:
    """Random trees and votes with tiny stakes (ties everywhere): after every step the
    store's head, weights and known blocks equal the reference's."""
    fc = ForkChoice(GENESIS)
    reference = ReferenceStore(GENESIS)
    balances = {v: v % 3 for v in range(validators)}
    fc.set_balances(balances)
    reference.set_balances(balances)
    created = [GENESIS]  # every root ever made, pruned ones included
    for step, (kind, a, b, c) in enumerate(operations):
        known = [r for r in created if r in reference.blocks]
        if kind == "block":
            parent = created[a % len(created)]  # sometimes a pruned parent: refused by both
            root = root_of(f"block{step}")
            slot = (fc.slot(parent) if parent in fc else 0) + 1 + c
            if parent in reference.blocks:
                fc.on_block(root, parent, slot)
                reference.on_block(root, parent, slot)
                created.append(root)
            else:
                with pytest.raises(UnknownBlock):
                    fc.on_block(root, parent, slot)
        elif kind == "vote":
            validator, head = a % (validators + 1), created[b % len(created)]  # one validator without stake
            assert fc.on_attestation(validator, c + step // 4, head) == reference.on_attestation(
                validator, c + step // 4, head)
        elif kind == "equivocate":
            fc.on_equivocation(a % validators)
            reference.on_equivocation(a % validators)
        elif kind == "balances":
            balances = {v: (a >> v) % 4 for v in range(validators)}
            fc.set_balances(balances)
            reference.set_balances(balances)
        elif kind == "justify":
            checkpoint = Checkpoint(reference.finalized.epoch + c, known[a % len(known)])
            fc.set_justified(checkpoint)
            reference.set_justified(checkpoint)
        elif kind == "finalize":
            # A block on the justified block's line: its ancestor or its descendant.
            line = [r for r in known if reference.is_descendant(r, reference.justified.root)
                    or reference.is_descendant(reference.justified.root, r)]
            checkpoint = Checkpoint(max(reference.finalized.epoch, reference.justified.epoch) + c,
                                    line[a % len(line)])
            fc.set_finalized(checkpoint)
            reference.set_finalized(checkpoint)
        assert fc.head() == reference.head()
    assert {r for r in created if r in fc} == set(reference.blocks)
    for root in reference.blocks:
        assert fc.weight(root) == reference.weight(root)
    assert fc.justified == reference.justified and fc.finalized == reference.finalized
