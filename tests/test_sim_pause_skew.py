"""The simulator's pause (SIGSTOP/SIGCONT) and clock skew, checked by outcomes: a paused
node runs nothing and misses nothing, and a skewed node's clock is off by the skew."""

from sim.cluster import Cluster
from sim.scenario import SimConfig, run_simulation

from test_sim import all_agree, genesis, run_until, total_hashrate


def cluster_of(count: int = 3) -> Cluster:
    g = genesis()
    return Cluster(g, count, seed=5, hashrates=[total_hashrate(g) / count] * count)


def test_a_paused_node_runs_nothing_then_reads_what_waited_and_catches_up():
    c = cluster_of()
    assert run_until(c, lambda c: all_agree(c) and c.nodes[0].core.tree.head.height >= 2, 60_000)
    paused = c.nodes[2]
    c.pause(2)
    height, mined, received = paused.core.tree.head.height, paused.core.blocks_mined, paused.core.router.messages_first
    others_before = c.nodes[0].core.tree.head.height
    assert run_until(c, lambda c: c.nodes[0].core.tree.head.height >= others_before + 3, 60_000)
    # Frozen: no block in, none mined, no message read, while the others went on.
    assert (paused.core.tree.head.height, paused.core.blocks_mined, paused.core.router.messages_first) == \
        (height, mined, received)
    assert paused.deferred, "what peers sent it waits for it"
    c.resume(2)
    assert not paused.deferred
    assert paused.core.router.messages_first > received  # it read what had waited
    assert run_until(c, all_agree, 60_000)
    assert paused.core.tree.head.hash == c.nodes[0].core.tree.head.hash


def test_a_paused_node_does_not_answer_rpc_and_a_crash_ends_its_pause():
    c = cluster_of()
    run_until(c, lambda c: all_agree(c), 30_000)
    c.pause(1)
    request = c.rpc(1, "chain_getHead")
    c.run_until(c.now_ms + 1_000)
    assert request not in c.replies
    c.crash(1)
    assert not c.nodes[1].paused and not c.nodes[1].deferred
    c.restart(1)
    assert run_until(c, all_agree, 60_000)


def test_skew_moves_one_node_clock_and_clearing_it_lets_the_clock_catch_up():
    c = cluster_of()
    run_until(c, all_agree, 30_000)
    c.set_skew(0, 5_000)
    c.run_until(c.now_ms + 10)
    assert c.nodes[0].core.now_ms - c.now_ms >= 4_990
    assert abs(c.nodes[1].core.now_ms - c.now_ms) <= 1_000
    c.set_skew(0, 0)
    ahead = c.nodes[0].core.now_ms
    c.run_until(c.now_ms + 2_000)
    assert c.nodes[0].core.now_ms == ahead  # the core never lets time go back: it waits
    c.run_until(c.now_ms + 5_000)
    assert c.nodes[0].core.now_ms > ahead
    assert run_until(c, all_agree, 60_000)


def test_pause_and_skew_runs_pass_every_invariant_and_replay_exactly():
    for consensus in ("pow", "pos"):
        config = SimConfig(consensus=consensus, nodes=4, seed=7, duration_s=50, faults=("pause", "skew"))
        first, second = run_simulation(config), run_simulation(config)
        assert first.ok, [v for v in first.verdicts if not v.ok]
        assert first.faults_injected["pause"] >= 1 and first.faults_injected["skew"] >= 1
        assert first.digest == second.digest
