"""Block propagation on an 8-node local testnet: from creation to the last node, p50 and p95.

Figure: for every block of the final canonical chain mined during the measurement,
the time from its creation (the miner's `block_mined` log line) to its arrival at the
last of the 8 nodes; p50 and p95 over the blocks. Arrival at a node is read from the
node's own `new_head` log line for that block (microsecond timestamps, the same clock:
every node runs on this machine). A node whose log has no `new_head` event (an older
node) is instead observed by polling every node's GET /health every 10 ms; the output
says which method and resolution were used (CHAINLAB_BENCH_POLL=1 forces polling). A node that never had the block as its
head (a descendant arrived with it) counts the first time its head was a descendant.
All 8 nodes mine (preset `minimal`, 1 s target interval, a hashrate cap per node that
sums to the genesis difficulty's one block a second); blocks carry no transfers.
Limit: a tenth of the mean block interval measured in the same run. Blocks that reach
every node within a tenth of the interval keep forks rare (the chance another miner
finds a competing block meanwhile is about the delay / the interval), so the goal is
p95 <= limit, i.e. ratio = limit / p95 >= 1.0. p50 is printed with the same limit for
context, and so are the forks (reorgs) the nodes logged.

    python benchmarks/bench_propagation.py [--quick] [--json]
"""

import asyncio
import os
import time

import benchlib  # noqa: F401  (puts the repository on sys.path)
from benchlib import Figure, cli

import netlib

BENCHMARK = "propagation"
NODES = 8
PRESET = "minimal"
HASHRATE_PER_NODE = 12_500  # x 8 = the 100,000 hashes/s the minimal genesis difficulty expects
POLL_S = 0.010
SETTLE_S = 3.0  # after the window: blocks mined in its last seconds still propagate
LIMIT_SHARE = 0.10  # of the mean block interval
GOAL_RATIO = 1.0


async def observe(c: netlib.Cluster, duration_s: float) -> dict:
    async with netlib.session(limit=4 * NODES) as s:
        for node in c.nodes:
            c.start_node(node)
        for node in c.nodes:
            await netlib.wait_healthy(s, node)
        await netlib.wait_peers(s, c.nodes, 3)
        deadline = time.monotonic() + 60
        while min([(await netlib.health(s, n.url))["height"] for n in c.nodes]) < 2:
            if time.monotonic() > deadline:
                raise RuntimeError("the testnet made no 2 blocks within 60 s")
            await asyncio.sleep(0.1)
        logged = (any(r.get("event") == "new_head" for n in c.nodes for r in n.logs())
                  and not os.environ.get("CHAINLAB_BENCH_POLL"))
        polls: list[list[tuple[float, int, str]]] = [[] for _ in c.nodes]  # per node: (time, height, head)
        poll_cost = [0.0, 0]  # seconds spent in poll rounds, rounds
        window_start = time.time()
        end = time.monotonic() + duration_s
        if logged:
            await asyncio.sleep(duration_s)
        else:
            while time.monotonic() < end:
                t = time.monotonic()
                replies = await asyncio.gather(*(netlib.health(s, n.url) for n in c.nodes))
                now = time.time()
                for i, h in enumerate(replies):
                    if not polls[i] or polls[i][-1][2] != h["head"]:
                        polls[i].append((now, h["height"], h["head"]))
                poll_cost[0] += time.monotonic() - t
                poll_cost[1] += 1
                await asyncio.sleep(max(0.0, POLL_S - (time.monotonic() - t)))
        window_end = time.time()
        if not logged:  # keep polling while the last blocks propagate
            settle_end = time.monotonic() + SETTLE_S
            while time.monotonic() < settle_end:
                replies = await asyncio.gather(*(netlib.health(s, n.url) for n in c.nodes))
                now = time.time()
                for i, h in enumerate(replies):
                    if not polls[i] or polls[i][-1][2] != h["head"]:
                        polls[i].append((now, h["height"], h["head"]))
                await asyncio.sleep(POLL_S)
        else:
            await asyncio.sleep(SETTLE_S)
        # The final canonical chain, from the node with the best head.
        heads = [await netlib.health(s, n.url) for n in c.nodes]
        best = max(range(NODES), key=lambda i: heads[i]["height"])
        top = heads[best]["height"]
        replies = []
        for low in range(1, top + 1, 100):
            replies += await netlib.rpc_batch(s, c.nodes[best].url,
                                              [("chain_getBlockHash", [h]) for h in range(low, min(top, low + 99) + 1)])
        canonical = {r["result"]: h for h, r in zip(range(1, top + 1), replies) if "result" in r}
    for node in c.nodes:  # flush the logs: stop the nodes, then read
        c.stop_node(node)
    logs = [n.logs() for n in c.nodes]
    return {"logged": logged, "polls": polls, "poll_cost": poll_cost, "window": (window_start, window_end),
            "canonical": canonical, "logs": logs}


def arrivals_from_logs(logs: list[dict]) -> list[tuple[float, int, str]]:
    return [(netlib.log_time(r), r["height"], r["hash"]) for r in logs if r.get("event") == "new_head"]


def main(quick: bool = False) -> list[Figure]:
    duration = 8.0 if quick else 60.0
    with netlib.cluster(NODES, accounts=8, seed="bench-propagation", preset=PRESET, hashrate=HASHRATE_PER_NODE,
                        mining=True) as c:
        m = asyncio.run(observe(c, duration))
    canonical = m["canonical"]
    start, end = m["window"]
    mined = {}  # hash -> (created, height, miner)
    for i, logs in enumerate(m["logs"]):
        for r in logs:
            if r.get("event") == "block_mined" and r["hash"] in canonical:
                mined[r["hash"]] = (netlib.log_time(r), r["height"], i)
    # Head changes per node: (time, height, hash), from logs or from polling.
    heads = [arrivals_from_logs(logs) for logs in m["logs"]] if m["logged"] else m["polls"]
    delays_last, delays_each = [], []
    for block_hash, (created, height, miner) in mined.items():
        if not start <= created <= end:
            continue
        arrivals = []
        for changes in heads:
            # First head at this height or above on the final chain: the block or a descendant.
            t = next((t for t, h, hh in changes if h >= height and canonical.get(hh) == h), None)
            if t is None:
                break
            arrivals.append(max(0.0, t - created))
        else:
            delays_last.append(max(arrivals))
            delays_each.extend(a for i, a in enumerate(arrivals) if i != miner)
    if len(delays_last) < 3:
        raise RuntimeError(f"only {len(delays_last)} blocks were measured; the testnet mined too little")
    times = sorted(t for t, _, _ in mined.values() if start <= t <= end)
    interval = (times[-1] - times[0]) / (len(times) - 1)
    limit_ms = LIMIT_SHARE * interval * 1000
    p50 = netlib.percentile(delays_last, 50) * 1000
    p95 = netlib.percentile(delays_last, 95) * 1000
    reorgs = sum(1 for logs in m["logs"] for r in logs if r.get("event") == "reorg")
    if m["logged"]:
        method = "arrival = each node's new_head log line (us timestamps)"
    else:
        rounds = max(1, m["poll_cost"][1])
        method = (f"arrival = polling GET /health on all {NODES} nodes every {POLL_S * 1000:.0f} ms "
                  f"(a round took {m['poll_cost'][0] / rounds * 1000:.1f} ms; resolution about "
                  f"{POLL_S * 1000 + m['poll_cost'][0] / rounds * 1000:.0f} ms)"
                  + (" as CHAINLAB_BENCH_POLL asked" if os.environ.get("CHAINLAB_BENCH_POLL")
                     else ": the nodes log no per-block arrival (new_head)"))
    settings = (f"{NODES} nodes all mining at {HASHRATE_PER_NODE:,} hashes/s, preset {PRESET}, empty blocks, "
                f"{duration:g} s window; {len(delays_last)} canonical blocks measured; {method}; "
                f"{netlib.machine_note()}")
    limit_name = f"{LIMIT_SHARE:.0%} of the mean block interval ({interval:.2f} s) in this run"
    return [
        Figure(BENCHMARK, f"block propagation to the last of {NODES} nodes, p95", p95, "ms", limit_ms, limit_name,
               limit_ms / p95, GOAL_RATIO, goal_text="p95 within a tenth of the block interval", note=settings),
        Figure(BENCHMARK, f"block propagation to the last of {NODES} nodes, p50 (context)", p50, "ms", limit_ms,
               limit_name, limit_ms / p50,
               note=f"to each other node: p50 {netlib.percentile(delays_each, 50) * 1000:.1f} ms, "
                    f"p95 {netlib.percentile(delays_each, 95) * 1000:.1f} ms; max to the last node "
                    f"{max(delays_last) * 1000:.1f} ms; reorgs logged by the nodes: {reorgs}"),
    ]


if __name__ == "__main__":
    cli(BENCHMARK, main, __doc__.split("\n")[0])
