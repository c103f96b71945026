"""Invariant checks over what each node reports, the same for simulated and real networks.

A ChainView is what one node says about its canonical chain; the simulator builds it
from a NodeCore, a real testnet can build it over RPC. Each check returns a Verdict
with a detail line that says what broke, where.
"""

from dataclasses import dataclass, field
from typing import NamedTuple


class Verdict(NamedTuple):
    name: str
    ok: bool
    detail: str


@dataclass
class ChainView:
    node: str
    hashes: list[bytes]  # canonical block hash at each height
    state_roots: list[bytes]
    txids: list[list[bytes]]  # transactions at each height
    senders_nonces: list[list[tuple[bytes, int]]]
    total_balance: int
    expected_supply: int
    issued: int
    expected_issued: int
    final_height: int
    head_state_root: bytes  # the root recomputed from the node's head state
    extra: dict = field(default_factory=dict)

    @property
    def height(self) -> int:
        return len(self.hashes) - 1


def view_of_core(name: str, core) -> ChainView:
    """A ChainView of a NodeCore (read-only; no effects)."""
    tree = core.tree
    canonical = tree.canonical
    state = tree.head_state()
    return ChainView(
        node=name,
        hashes=[e.hash for e in canonical],
        state_roots=[e.header.state_root for e in canonical],
        txids=[[t.txid for t in e.block.transactions] for e in canonical],
        senders_nonces=[[(t.sender_address, t.nonce) for t in e.block.transactions] for e in canonical],
        total_balance=state.total_balance(),
        expected_supply=state.expected_supply(),
        issued=state.issued,
        # Block rewards, plus what the engine issued itself (proof of stake: vote rewards).
        expected_issued=tree.params.block_reward * tree.head.height + (state.engine.issued if state.engine else 0),
        final_height=tree.final_height,
        head_state_root=state.root(),
        extra={"slashed": state.engine.slashed() if state.engine is not None else []},
    )


def check_finalized_agree(views: list[ChainView]) -> Verdict:
    """No two nodes hold conflicting final blocks: the lower final block is on the other's chain."""
    name = "no conflicting final (finalized) blocks"
    for a in views:
        for b in views:
            h = min(a.final_height, b.final_height)
            if h < len(a.hashes) and h < len(b.hashes) and a.hashes[h] != b.hashes[h]:
                return Verdict(name, False, f"{a.node} and {b.node} differ at final height {h}")
    return Verdict(name, True, "final heights " + ", ".join(f"{v.node}={v.final_height}" for v in views))


def check_no_honest_slashed(views: list[ChainView], byzantine: set[int]) -> Verdict:
    name = "no honest validator slashed"
    for v in views:
        honest = sorted(set(v.extra.get("slashed", [])) - byzantine)
        if honest:
            return Verdict(name, False, f"{v.node} holds honest validators {honest} slashed")
    slashed = sorted({i for v in views for i in v.extra.get("slashed", [])})
    return Verdict(name, True, f"slashed: {slashed or 'none'}; byzantine: {sorted(byzantine) or 'none'}")


def check_byzantine_slashed(views: list[ChainView], byzantine: set[int]) -> Verdict:
    """Every misbehaving validator is slashed in every node's chain (by the run's end)."""
    name = "every byzantine validator slashed on every node"
    for v in views:
        missing = sorted(byzantine - set(v.extra.get("slashed", [])))
        if missing:
            return Verdict(name, False, f"{v.node} has not slashed {missing}")
    return Verdict(name, True, f"{sorted(byzantine)} slashed on {len(views)} nodes" if byzantine else "no byzantine validators")


def check_common_prefix(views: list[ChainView], k: int) -> Verdict:
    """Every two nodes agree on every height at least k below the lower of their heads."""
    name = f"common prefix below the last {k} blocks"
    for i, a in enumerate(views):
        for b in views[i + 1:]:
            h = min(a.height, b.height) - k
            # Blocks commit to their parents, so agreement at h means agreement below it.
            if h >= 0 and a.hashes[h] != b.hashes[h]:
                return Verdict(name, False, f"{a.node} and {b.node} differ at height {h} "
                               f"({a.hashes[h].hex()[:12]} vs {b.hashes[h].hex()[:12]}), k={k}")
    return Verdict(name, True, f"{len(views)} nodes agree below their last {k} blocks")


def check_identical_at_equal_heights(views: list[ChainView], k: int) -> Verdict:
    """All nodes hold the same block and state root at every height below the last k, and
    each node's own state recomputes to the root its head block commits to."""
    name = "identical blocks and state roots at equal heights"
    if not views:
        return Verdict(name, True, "no nodes")
    for v in views:
        if v.head_state_root != v.state_roots[-1]:
            return Verdict(name, False, f"{v.node}: head state hashes to {v.head_state_root.hex()[:12]}, "
                           f"its head block says {v.state_roots[-1].hex()[:12]}")
    top = min(v.height for v in views) - k
    checked = 0
    for h in range(0, top + 1):
        hashes = {v.hashes[h] for v in views}
        roots = {v.state_roots[h] for v in views}
        if len(hashes) != 1 or len(roots) != 1:
            return Verdict(name, False, f"height {h}: {len(hashes)} distinct blocks, {len(roots)} distinct state roots")
        checked += 1
    return Verdict(name, True, f"{checked} heights identical on {len(views)} nodes")


def check_supply(views: list[ChainView]) -> Verdict:
    name = "supply conserved (genesis + rewards - burned)"
    for v in views:
        if v.total_balance != v.expected_supply:
            return Verdict(name, False, f"{v.node}: balances sum to {v.total_balance}, expected {v.expected_supply}")
        if v.issued != v.expected_issued:
            return Verdict(name, False, f"{v.node}: issued {v.issued}, expected {v.expected_issued} at height {v.height}")
    return Verdict(name, True, f"{len(views)} nodes conserve supply")


def check_no_double_apply(views: list[ChainView]) -> Verdict:
    name = "no transaction applied twice"
    for v in views:
        seen: set[bytes] = set()
        nonces: set[tuple[bytes, int]] = set()
        for h, (txids, sn) in enumerate(zip(v.txids, v.senders_nonces)):
            for txid, key in zip(txids, sn):
                if txid in seen or key in nonces:
                    return Verdict(name, False, f"{v.node}: transaction {txid.hex()[:16]} (or its nonce) applied again at height {h}")
                seen.add(txid)
                nonces.add(key)
    return Verdict(name, True, f"{len(views)} chains checked")


def check_no_included_lost(views: list[ChainView], deep_included: dict[bytes, str]) -> Verdict:
    """Every transaction once seen k deep on some node is in every node's final chain."""
    name = "no included transaction lost"
    for v in views:
        present = {txid for txids in v.txids for txid in txids}
        missing = sorted(txid for txid in deep_included if txid not in present)
        if missing:
            return Verdict(name, False, f"{v.node} lacks {len(missing)} transaction(s) once deep on "
                           f"{deep_included[missing[0]]}, e.g. {missing[0].hex()[:16]}")
    return Verdict(name, True, f"{len(deep_included)} deep transactions present on {len(views)} nodes")


def check_heads_agree(views: list[ChainView]) -> Verdict:
    name = "all heads agree after the quiet period"
    heads = {v.hashes[-1] for v in views}
    if len(heads) == 1:
        return Verdict(name, True, f"{len(views)} nodes at height {views[0].height}")
    detail = ", ".join(f"{v.node}@{v.height}:{v.hashes[-1].hex()[:8]}" for v in views)
    return Verdict(name, False, detail)


def check_final_never_decreases(final_heights: dict[str, list[int]]) -> Verdict:
    """Each node's final height, in the order it was observed (a real node across its
    restarts, sampled over RPC), never goes down: what is final stays final."""
    name = "final height never decreases (across restarts)"
    for node, heights in sorted(final_heights.items()):
        for i in range(1, len(heights)):
            if heights[i] < heights[i - 1]:
                return Verdict(name, False, f"{node}: final height went back from {heights[i - 1]} to {heights[i]} "
                               f"(observation {i} of {len(heights)})")
    tops = ", ".join(f"{node}={heights[-1]}" for node, heights in sorted(final_heights.items()) if heights)
    return Verdict(name, True, f"{sum(len(h) for h in final_heights.values())} observations; last: {tops or 'none'}")
