"""Simulation tests: the real node code on the simulated network, checked by outcomes.

Each test builds a cluster or a scenario from a seed, drives it on the virtual clock,
and asserts on heads, heights, reorg depths, balances and invariant verdicts. Waits
are on conditions with a bound in simulated time, never on wall-clock sleeps. A
failing scenario prints its replay command.
"""

import pytest

from consensus.pow.difficulty import compact_to_target, work_of_target
from consensus.presets import account_key, make_genesis
from consensus.types import TX_TRANSFER, Transaction
from sim.cluster import Cluster
from sim.scenario import FAULT_TYPES, SimConfig, run_simulation

SEED_TEXT = "test-sim"


def genesis():
    return make_genesis(seed=SEED_TEXT, accounts=4)


def total_hashrate(g) -> float:
    """Hashes per second that find one block per target spacing at the genesis difficulty."""
    params = g.param_dict
    return work_of_target(compact_to_target(params["genesis_bits"])) * 1000 / params["target_spacing_ms"]


def run_until(cluster: Cluster, predicate, timeout_ms: int, step_ms: int = 100) -> bool:
    deadline = cluster.now_ms + timeout_ms
    while cluster.now_ms < deadline:
        if predicate(cluster):
            return True
        cluster.run_until(cluster.now_ms + step_ms)
    return predicate(cluster)


def heads(cluster: Cluster, nodes=None) -> set[bytes]:
    nodes = range(len(cluster.nodes)) if nodes is None else nodes
    return {cluster.nodes[i].core.tree.head.hash for i in nodes if cluster.nodes[i].core is not None}


def all_agree(cluster: Cluster) -> bool:
    return len(heads(cluster)) == 1 and all(n.up for n in cluster.nodes)


def signed_transfer(g, sender_index: int, recipient: bytes, amount: int, fee: int, nonce: int) -> Transaction:
    key = account_key(SEED_TEXT, sender_index)
    tx = Transaction(TX_TRANSFER, g.chain_id, key.public_key, recipient, amount, fee, nonce, b"")
    return tx._replace(signature=key.sign(tx.signing_bytes()))


def test_same_seed_gives_the_same_digest_and_another_seed_does_not():
    config = SimConfig(nodes=4, seed=11, duration_s=30, faults=("partition", "loss", "duplicate", "crash", "delay"))
    first = run_simulation(config)
    second = run_simulation(config)
    other = run_simulation(SimConfig(nodes=4, seed=12, duration_s=30, faults=config.faults))
    assert first.digest == second.digest
    assert [n["head"] for n in first.nodes] == [n["head"] for n in second.nodes]
    assert other.digest != first.digest


@pytest.mark.parametrize("seed", range(1, 25))
def test_seeds_with_every_fault_keep_every_invariant(seed):
    config = SimConfig(nodes=5, seed=seed, duration_s=60, faults=FAULT_TYPES, tx_rate=3.0)
    result = run_simulation(config)
    failed = [f"{v.name}: {v.detail}" for v in result.verdicts if not v.ok]
    assert not failed, f"{failed}\nreplay: {config.replay_command()}"
    assert sum(result.faults_injected.values()) >= len(FAULT_TYPES)
    assert min(n["height"] for n in result.nodes) >= 20, "the chain kept growing"
    # Every acknowledged transfer made it, unless the client itself reused its nonce
    # (it read the nonce from a node that had just restarted and was behind).
    assert result.tx_acknowledged > 0
    assert result.tx_included + result.tx_superseded == result.tx_acknowledged


def test_six_nodes_split_four_two_both_mine_then_minority_reorgs_onto_the_heavier_chain():
    g = genesis()
    rate = total_hashrate(g)
    cluster = Cluster(g, 6, seed=5, hashrates=[rate / 6] * 6)
    assert run_until(cluster, lambda c: all_agree(c) and c.nodes[0].core.tree.head.height >= 5, 60_000)
    fork_height = cluster.nodes[0].core.tree.head.height
    majority, minority = [0, 1, 2, 3], [4, 5]
    cluster.network.partition([majority, minority])
    cluster.run_until(cluster.now_ms + 40_000)
    minority_head = cluster.nodes[4].core.tree.head
    majority_head = cluster.nodes[0].core.tree.head
    # Both sides kept mining on their own branch.
    assert minority_head.height > fork_height + 2
    assert majority_head.height > minority_head.height
    assert heads(cluster, minority).isdisjoint(heads(cluster, majority))
    minority_blocks = {cluster.nodes[4].core.tree.canonical[h].hash for h in range(fork_height + 2, minority_head.height + 1)}
    reorgs_before = cluster.nodes[4].core.reorgs
    cluster.network.heal_partitions()
    assert run_until(cluster, all_agree, 60_000), "heads did not agree within 60 s of the heal"
    node4 = cluster.nodes[4].core
    # The minority switched to the heavier chain: a reorg at least as deep as its own branch.
    assert node4.reorgs > reorgs_before
    assert node4.deepest_reorg >= minority_head.height - fork_height - 1
    final_chain = {e.hash for e in node4.tree.canonical}
    assert minority_blocks.isdisjoint(final_chain)
    assert node4.tree.head.score >= majority_head.score


def test_a_crashed_node_restarts_from_its_store_and_catches_up():
    g = genesis()
    rate = total_hashrate(g)
    cluster = Cluster(g, 4, seed=8, hashrates=[rate / 4] * 4)
    assert run_until(cluster, lambda c: c.nodes[2].core.tree.head.height >= 15, 60_000)
    height_before = cluster.nodes[2].core.tree.head.height
    stored = len(cluster.nodes[2].store.blocks)
    cluster.crash(2)
    cluster.run_until(cluster.now_ms + 20_000)
    others = cluster.nodes[0].core.tree.head.height
    assert others > height_before + 5, "the rest kept going without node 2"
    cluster.restart(2)
    # Straight after the restart, before any sync: resumed from disk, not from genesis.
    assert cluster.nodes[2].core.tree.head.height >= height_before - 1
    assert stored >= height_before
    assert run_until(cluster, all_agree, 30_000)
    assert cluster.nodes[2].core.tree.head.height >= others


def test_a_transaction_sent_to_one_node_is_included_on_all():
    g = genesis()
    rate = total_hashrate(g)
    cluster = Cluster(g, 5, seed=21, hashrates=[rate / 5] * 5)
    assert run_until(cluster, lambda c: all(len(n.core.by_node_id) >= 2 for n in c.nodes), 10_000)
    recipient = account_key(SEED_TEXT, 3).address
    balance_before = cluster.nodes[0].core.tree.head_state().get(recipient).balance
    tx = signed_transfer(g, 0, recipient, amount=12_345, fee=7, nonce=0)
    request = cluster.rpc(1, "tx_send", [tx.encode().hex()])
    assert cluster.replies[request].error is None
    assert cluster.replies[request].result == tx.txid.hex()

    def included_everywhere(c: Cluster) -> bool:
        return all(n.core.tree.transaction_location(tx.txid) is not None for n in c.nodes)

    assert run_until(cluster, included_everywhere, 30_000)
    assert run_until(cluster, all_agree, 30_000)
    for node in cluster.nodes:
        state = node.core.tree.head_state()
        assert state.get(recipient).balance == balance_before + 12_345
        assert state.get(account_key(SEED_TEXT, 0).address).nonce == 1


def test_difficulty_retargets_when_the_hashrate_doubles():
    g = genesis()
    rate = total_hashrate(g)
    cluster = Cluster(g, 4, seed=3, hashrates=[2 * rate / 4] * 4)  # twice the rate the genesis bits assume
    interval = g.param_dict["retarget_interval_blocks"]
    assert run_until(cluster, lambda c: c.nodes[0].core.tree.head.height >= 3 * interval, 120_000)
    tree = cluster.nodes[0].core.tree
    first_bits = tree.canonical[1].header.bits
    later_bits = tree.canonical[3 * interval].header.bits
    # Blocks came about twice as fast, so the target shrank (difficulty rose).
    assert compact_to_target(later_bits) < compact_to_target(first_bits)
