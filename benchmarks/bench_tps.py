"""Transfers per second end to end on a 4-node local testnet of real node processes.

Figure: N transfers, signed before the clock starts, from many prefunded accounts
(`chainlab genesis --accounts`), are sent over JSON-RPC (`tx_send`, batches of 100
calls, a few batches in flight per node) to the four nodes, each sender's transfers
to one node in nonce order. A watcher polls every node's chain (`chain_getHead`,
`chain_getBlockHash`, `chain_getBlock`, reorgs followed) and notes when each transfer
first sits in that node's canonical chain. A transfer counts when it is included on
all four nodes; TPS = transfers included on all nodes / seconds from the first send
to the moment the last of them was included on the last node.
Limit: what the machine could verify: single-core Ed25519 verifications per second
with `cryptography` (the same signatures and keys parsed beforehand: the bare
verification, the strictest limit; measured in this run before and after the nodes)
x os.cpu_count() / nodes, because every node verifies every transfer once.
Goal: ratio >= 0.5.

Settings are printed with the figure: preset `minimal` (1 s target block interval,
retarget every 20 blocks) and every node mining under a hashrate cap summing to the
genesis difficulty's one block a second, so block capacity (4,000 transfers a block)
is not the limit; fee 1 (the minimum).

    python benchmarks/bench_tps.py [--quick] [--json]
"""

import asyncio
import os
import random
import time

import benchlib  # noqa: F401  (puts the repository on sys.path)
from benchlib import Figure, cli

import netlib

from consensus.presets import account_key
from consensus.types import TX_TRANSFER, Transaction

BENCHMARK = "tps"
GOAL_RATIO = 0.5
SEED = "bench-tps"
NODES = 4
PRESET = "minimal"  # 1 s blocks; genesis bits expect 100,000 hashes/s in all
HASHRATE_PER_NODE = 25_000
BATCH = 100  # the node's rpc_batch_items_max
IN_FLIGHT_PER_NODE = 4  # batches outstanding per node
POLL_S = 0.05
TIMEOUT_S = 90.0


def build_transfers(accounts: int, per_account: int, chain_id: str) -> list[list[Transaction]]:
    """Per node, its senders' transfers in sending order (nonce-major, so every batch
    holds many senders and each sender's nonces arrive in order)."""
    rng = random.Random(SEED)
    keys = [account_key(SEED, i) for i in range(accounts)]
    by_node: list[list[Transaction]] = [[] for _ in range(NODES)]
    for nonce in range(per_account):
        for i, key in enumerate(keys):
            recipient = keys[(i + 1 + rng.randrange(accounts - 1)) % accounts].address
            u = Transaction(TX_TRANSFER, chain_id, key.public_key, recipient, rng.randrange(1, 1_000), 1, nonce,
                            bytes(64))
            by_node[i % NODES].append(u._replace(signature=key.sign(u.signing_bytes())))
    return by_node


class ChainWatcher:
    """One node's canonical chain as seen by polling, with when each transfer first appeared."""

    def __init__(self, node: netlib.Node):
        self.node = node
        self.blocks: dict[int, tuple[str, list[str]]] = {}  # height -> (hash, txids)
        self.seen: dict[str, float] = {}  # txid -> time.monotonic() when first seen canonical
        self.reorged = 0
        self.head_height = 0

    async def poll(self, s) -> None:
        head = await netlib.rpc(s, self.node.url, "chain_getHead")
        height, head_hash = head["height"], head["hash"]
        known = self.blocks.get(height)
        if known is not None and known[0] == head_hash and height == self.head_height:
            return
        now = time.monotonic()
        top = max(self.blocks, default=0)
        low = max(1, min(top, height) - 8)
        heights = list(range(low, height + 1))
        hashes: dict[int, str] = {}
        for i in range(0, len(heights), 100):
            part = heights[i:i + 100]
            replies = await netlib.rpc_batch(s, self.node.url, [("chain_getBlockHash", [h]) for h in part])
            for h, r in zip(part, replies):
                if "result" in r:
                    hashes[h] = r["result"]
        changed = [h for h in heights if h in hashes and self.blocks.get(h, ("",))[0] != hashes[h]]
        for i in range(0, len(changed), 10):
            part = changed[i:i + 10]
            replies = await netlib.rpc_batch(s, self.node.url, [("chain_getBlock", [hashes[h], False]) for h in part])
            for h, r in zip(part, replies):
                if "result" not in r:
                    continue
                self._replace(h, (r["result"]["hash"], r["result"]["transactions"]), now)
        for h in [h for h in self.blocks if h > height]:  # the chain got shorter (a reorg)
            self._replace(h, None, now)
        self.head_height = height

    def _replace(self, height: int, block: tuple[str, list[str]] | None, now: float) -> None:
        old = self.blocks.pop(height, None)
        if old is not None:
            self.reorged += 1
            keep = set(block[1]) if block else set()
            for txid in old[1]:
                if txid not in keep:
                    self.seen.pop(txid, None)
        if block is not None:
            self.blocks[height] = block
            for txid in block[1]:
                self.seen.setdefault(txid, now)


def node_cpu(c: netlib.Cluster) -> tuple[float, float]:
    """CPU seconds so far of the node processes, and of their children (miner workers)."""
    nodes = children = 0.0
    for n in c.nodes:
        if n.proc is not None:
            nodes += netlib.cpu_seconds(n.proc.pid)
            children += sum(netlib.cpu_seconds(p) for p in n.proc.note_children())
    return nodes, children


async def one_round(c: netlib.Cluster, s, watchers: list[ChainWatcher], by_node: list[list[Transaction]]) -> dict:
    """Send every transfer of `by_node` and wait until all are included on every node."""
    for w in watchers:
        await w.poll(s)
    start_height = max(w.head_height for w in watchers)
    accepted: set[str] = set()
    rejected: list[str] = []
    send_done = 0.0
    cpu_before = node_cpu(c)
    t0 = time.monotonic()

    async def send(node: netlib.Node, batches: list[list[Transaction]]) -> None:
        queue = list(reversed(batches))

        async def lane() -> None:
            while queue:
                batch = queue.pop()
                replies = await netlib.rpc_batch(s, node.url, [("tx_send", [tx.encode().hex()]) for tx in batch])
                for r in replies:
                    if "result" in r:
                        accepted.add(r["result"])
                    else:
                        rejected.append(str(r.get("error"))[:200])

        await asyncio.gather(*(lane() for _ in range(IN_FLIGHT_PER_NODE)))

    async def sender() -> None:
        nonlocal send_done
        await asyncio.gather(*(send(node, [txs[i:i + BATCH] for i in range(0, len(txs), BATCH)])
                               for node, txs in zip(c.nodes, by_node)))
        send_done = time.monotonic()

    send_task = asyncio.create_task(sender())
    deadline = t0 + TIMEOUT_S
    timed_out = False
    try:
        while True:
            await asyncio.sleep(POLL_S)
            await asyncio.gather(*(w.poll(s) for w in watchers))
            if send_task.done():
                send_task.result()  # re-raise a sender failure
                if all(txid in w.seen for w in watchers for txid in accepted):
                    break
            if time.monotonic() > deadline:
                timed_out = True
                break
    finally:
        if not send_task.done():
            send_task.cancel()
    cpu_after = node_cpu(c)
    everywhere = [max(w.seen[t] for w in watchers) for t in accepted if all(t in w.seen for w in watchers)]
    end = max(everywhere, default=time.monotonic())
    end_height = min(w.head_height for w in watchers)
    blocks = [watchers[0].blocks[h] for h in range(start_height + 1, end_height + 1) if h in watchers[0].blocks]
    times = []
    for h in (start_height, end_height):
        times.append((await netlib.rpc(s, c.nodes[0].url, "chain_getBlock", h))["timestamp_ms"])
    return {
        "included": len(everywhere), "accepted": len(accepted), "rejected": rejected, "timed_out": timed_out,
        "elapsed": end - t0, "send_s": (send_done or time.monotonic()) - t0,
        "blocks": len(blocks), "max_block": max((len(b[1]) for b in blocks), default=0),
        "interval_s": (times[1] - times[0]) / 1000 / max(1, end_height - start_height),
        "node_cpu_s": cpu_after[0] - cpu_before[0], "miner_cpu_s": cpu_after[1] - cpu_before[1],
    }


async def run_load(c: netlib.Cluster, rounds: list[list[list[Transaction]]]) -> list[dict]:
    async with netlib.session(limit=200) as s:
        for node in c.nodes:
            c.start_node(node)
        for node in c.nodes:
            await netlib.wait_healthy(s, node)
        await netlib.wait_peers(s, c.nodes, NODES - 1)
        # Wait for a first block everywhere: the miners' workers are up, the nodes agree.
        deadline = time.monotonic() + 30
        while min([(await netlib.health(s, n.url))["height"] for n in c.nodes]) < 1:
            if time.monotonic() > deadline:
                raise RuntimeError("no block within 30 s")
            await asyncio.sleep(0.1)
        watchers = [ChainWatcher(n) for n in c.nodes]
        results = []
        for by_node in rounds:
            results.append(await one_round(c, s, watchers, by_node))
        for r in results:
            r["reorged"] = sum(w.reorged for w in watchers)
        return results


def main(quick: bool = False) -> list[Figure]:
    # 20,000 transfers a round: long enough that the wait for the last block (about one
    # block interval) is a small part of the round, as it is in steady traffic.
    accounts = 80 if quick else 2_000
    per_account = 5 if quick else 10  # transfers per account per round
    rounds = 1 if quick else 2
    with netlib.cluster(NODES, accounts=accounts, seed=SEED, preset=PRESET, hashrate=HASHRATE_PER_NODE,
                        mining=True) as c:
        all_txs = build_transfers(accounts, per_account * rounds, c.chain_id)
        per_node_round = accounts // NODES * per_account
        plan = [[txs[r * per_node_round:(r + 1) * per_node_round] for txs in all_txs] for r in range(rounds)]
        total = sum(len(t) for t in plan[0])
        sample = [tx for txs in plan[0] for tx in txs][:2_000]
        triples = [(tx.sender, tx.signature, tx.signing_bytes()) for tx in sample]
        verify_before = netlib.ed25519_verify_rate(triples, repeat=3 if quick else 5)
        results = asyncio.run(run_load(c, plan))
    verify_after = netlib.ed25519_verify_rate(triples, repeat=3 if quick else 5)  # nodes stopped
    verify_rate = max(verify_before, verify_after)
    cores = os.cpu_count() or 1
    limit = verify_rate * cores / NODES
    m = max(results, key=lambda r: r["included"] / r["elapsed"])
    tps = m["included"] / m["elapsed"]
    settings = (f"{NODES} nodes, preset {PRESET} (1 s target blocks), all mining at {HASHRATE_PER_NODE:,} hashes/s each; "
                f"{total} transfers per round from {accounts} accounts, fee 1, tx_send batches of {BATCH}, "
                f"{IN_FLIGHT_PER_NODE} batches in flight per node, best of {rounds} rounds; {netlib.machine_note()}")
    problems = []
    for r in results:
        if r["rejected"]:
            problems.append(f"{len(r['rejected'])} rejected, e.g. {r['rejected'][0]}")
        if r["timed_out"]:
            problems.append(f"a round TIMED OUT after {TIMEOUT_S:g} s with {r['included']}/{r['accepted']} "
                            "included everywhere")
    per_round = ", ".join(f"{r['included'] / r['elapsed']:.0f}" for r in results)
    node_cpu_us = m["node_cpu_s"] / max(1, m["included"]) * 1e6
    verify_us = 1e6 / verify_rate
    return [
        Figure(BENCHMARK, "transfers included on all 4 nodes per second, end to end", tps, "transfers/s",
               limit, f"{cores} cores x {verify_rate:,.0f} Ed25519 verifications/s per core / {NODES} nodes, this run",
               tps / limit, GOAL_RATIO,
               note=f"{m['included']} of {total} included everywhere in {m['elapsed']:.1f} s "
                    f"(rounds: {per_round} transfers/s)"
                    + (f"; {'; '.join(problems)}" if problems else "") + f"; {settings}"),
        Figure(BENCHMARK, "transfers accepted by tx_send per second (context)", m["accepted"] / m["send_s"],
               "transfers/s", limit, "the same limit", m["accepted"] / m["send_s"] / limit,
               note=f"all {m['accepted']} sends answered in {m['send_s']:.1f} s; then {m['blocks']} blocks "
                    f"(largest {m['max_block']} transfers, the node's block_transactions_max is 4,000), "
                    f"mean block interval {m['interval_s']:.2f} s; {m['reorged']} block replacements seen"),
        Figure(BENCHMARK, "node CPU time per transfer, 4 nodes together (context)", node_cpu_us, "us",
               NODES * verify_us, f"{NODES} Ed25519 verifications ({verify_us:.0f} us each), this run",
               NODES * verify_us / node_cpu_us,
               note=f"utime+stime of the 4 node processes over the round / transfers included; their miner "
                    f"workers used {m['miner_cpu_s']:.1f} CPU s more"),
    ]


if __name__ == "__main__":
    cli(BENCHMARK, main, __doc__.split("\n")[0])
