"""Node start-up time (fresh home, home with stored blocks) and idle memory per node.

Start-up: wall time from spawning `chainlab node` to the first 200 answer of its GET
/health (polled every 5 ms), best of several starts measured in turns:
- a fresh home (no store yet);
- a home whose store holds a few hundred blocks with transfers (mined here before
  timing, with the node's own code: `BlockTree.build_block`, the PoW nonce search,
  `SqliteStore.persist`), which the node replays before it listens.
Limits, measured in the same run: spawning `bare_rpc_server.py` (an aiohttp JSON-RPC
server that imports nothing else) to its first /health answer: what any aiohttp
server in Python costs to start; for the stored home, that plus reading and decoding
the stored blocks (`SqliteStore.load_blocks`, timed in this process), the least a
replay can cost. Ratio: limit / node time. Goal: ratio >= 0.5 (a node starts within
twice that floor).

Memory: VmRSS (/proc/<pid>/status) of each node of an idle 4-node testnet (mining
off, peers connected, idle a few seconds), node process plus its children (the miner
worker and multiprocessing's resource tracker). Limit: VmRSS of the idle bare server
plus that of a bare Python interpreter per child, measured in the same run: what the
same processes cost before any chainlab code. Ratio: limit / node. Goal: >= 0.5.

    python benchmarks/bench_startup.py [--quick] [--json]
"""

import asyncio
import json
import math
import os
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import benchlib  # noqa: F401  (puts the repository on sys.path)
from benchlib import Figure, cli

import netlib

from consensus.chain import BlockTree
from consensus.engine import make_engine
from consensus.genesis import Genesis
from consensus.pow.difficulty import compact_to_target
from consensus.pow.mining import header_prefix, search_prefix, with_nonce
from consensus.pow.params import POW_PRESETS
from consensus.presets import account_key, make_genesis
from consensus.types import TX_TRANSFER, Block, Transaction

BENCHMARK = "startup"
GOAL_RATIO = 0.5
SEED = "bench-startup"
ACCOUNTS = 50
TRANSFERS_PER_BLOCK = 20
POLL_S = 0.005
MEMORY_NODES = 4
IDLE_S = 3.0
CHUNK = 16_384  # nonces per search task


# --- a home with stored blocks ------------------------------------------------------------


def easy_genesis(timestamp_ms: int) -> Genesis:
    """The `minimal` preset with the easiest difficulty allowed, so mining the store is quick;
    blocks and their replay are the same work at any difficulty."""
    pow_minimal = POW_PRESETS["minimal"]
    return make_genesis(consensus="pow", preset="minimal", seed=SEED, accounts=ACCOUNTS, timestamp_ms=timestamp_ms,
                        overrides={"genesis_bits": pow_minimal["limit_bits"]})


def mine_store(genesis: Genesis, blocks: int, store_path: Path, pool: ProcessPoolExecutor) -> None:
    """`blocks` blocks of transfers on `genesis`, persisted the way the node persists them."""
    from node.store import SqliteStore

    params = genesis.param_dict
    interval = params["retarget_interval_blocks"]
    # Spacing that makes each retarget window (interval - 1 gaps) last its target timespan exactly.
    spacing = math.ceil(params["target_spacing_ms"] * interval / (interval - 1))
    tree = BlockTree(genesis, make_engine(genesis))
    keys = [account_key(SEED, i) for i in range(ACCOUNTS)]
    producer = keys[0].address
    nonces = [0] * ACCOUNTS
    store = SqliteStore(store_path, genesis_hash=genesis.hash)
    workers = pool._max_workers  # noqa: SLF001
    try:
        for height in range(1, blocks + 1):
            txs = []
            for k in range(TRANSFERS_PER_BLOCK):
                i = (height * TRANSFERS_PER_BLOCK + k) % ACCOUNTS
                u = Transaction(TX_TRANSFER, genesis.chain_id, keys[i].public_key, keys[(i + 7) % ACCOUNTS].address,
                                1_000 + k, 1, nonces[i], bytes(64))
                txs.append(u._replace(signature=keys[i].sign(u.signing_bytes())))
                nonces[i] += 1
            now = genesis.timestamp_ms + height * spacing
            template = tree.build_block(txs, producer, now)
            assert len(template.transactions) == len(txs)
            prefix, target = header_prefix(template.header), compact_to_target(template.header.bits)
            start, found = 0, None
            while found is None:
                futures = [pool.submit(search_prefix, prefix, target, start + w * CHUNK, CHUNK) for w in range(workers)]
                results = [f.result() for f in futures]
                found = next((r.nonce for r in results if r.nonce is not None), None)
                start += workers * CHUNK
            block = Block(with_nonce(template.header, found), template.transactions)
            tree.add_block(block, now + 1)
            store.persist([block], [], [])  # one Ready per block, as a node that mined them would
    finally:
        store.close()


def load_blocks_seconds(genesis: Genesis, store_path: Path, repeat: int) -> tuple[float, int]:
    from node.store import SqliteStore

    best, count = float("inf"), 0
    for _ in range(repeat):
        t = time.perf_counter()
        store = SqliteStore(store_path, genesis_hash=genesis.hash)
        count = len(store.load_blocks())
        store.close()
        best = min(best, time.perf_counter() - t)
    return best, count


# --- start-up timing ------------------------------------------------------------------------------


async def time_start(s, proc_factory, port: int) -> tuple[float, netlib.Proc]:
    """Spawn, then poll /health; (seconds from spawn to the first answer, the process)."""
    proc = proc_factory()
    probe = netlib.Node(-1, Path("."), 0, port, proc)
    answered = await netlib.wait_healthy(s, probe, interval_s=POLL_S)
    return answered - proc.started_mono, proc


async def measure_starts(c: netlib.Cluster, stored: Path, repeat: int) -> dict:
    node = c.nodes[0]
    result_file = c.tmp / "empty.json"
    result_file.write_text(json.dumps({}))
    store = node.home / "chain.sqlite"
    best = {"bare": float("inf"), "fresh": float("inf"), "stored": float("inf")}
    replay_s = []
    stored_rss = 0
    phases: dict[str, tuple[float, float]] = {}  # kind -> (spawn to node_starting, to node_started), best run

    def clear_store() -> None:
        for suffix in ("", "-wal", "-shm"):
            Path(str(store) + suffix).unlink(missing_ok=True)

    async with netlib.session(limit=8) as s:
        for _ in range(repeat + 1):  # the first round warms the page cache and is not counted
            first = _ == 0
            for kind in ("bare", "fresh", "stored"):
                port = netlib.free_ports(1)[0]
                if kind == "bare":
                    def factory(port=port):
                        p = netlib.spawn_bare_rpc(port, result_file, c.tmp / "bare.log")
                        c.procs.append(p)
                        return p
                else:
                    clear_store()
                    if kind == "stored":
                        shutil.copyfile(stored, store)
                    node.rpc_port = port
                    node.p2p_port = netlib.free_ports(1)[0]
                    node.log_path.unlink(missing_ok=True)

                    def factory():
                        return c.start_node(node, mining=False)
                seconds, proc = await time_start(s, factory, port)
                if kind != "bare" and not first and seconds < best[kind]:
                    events = {r.get("event"): netlib.log_time(r) - proc.started_at for r in node.logs()}
                    phases[kind] = (events.get("node_starting", float("nan")), events.get("node_started", float("nan")))
                if kind == "stored":
                    loaded = [r for r in node.logs() if r.get("event") == "store_loaded"]
                    if not loaded or loaded[-1].get("blocks", 0) < 1:
                        raise RuntimeError(f"the node did not load the stored blocks: {loaded}")
                    if not first:
                        replay_s.append(loaded[-1]["seconds"])
                    if _ == repeat:
                        await asyncio.sleep(1.0)
                        stored_rss = netlib.rss_kib(proc.pid) + sum(netlib.rss_kib(p) for p in proc.note_children())
                proc.stop()
                if not first:
                    best[kind] = min(best[kind], seconds)
    clear_store()
    return {"best": best, "replay_s": min(replay_s), "stored_rss_kib": stored_rss, "phases": phases}


# --- idle memory ----------------------------------------------------------------------------------


async def measure_memory(c: netlib.Cluster) -> dict:
    result_file = c.tmp / "head.json"
    async with netlib.session(limit=16) as s:
        for node in c.nodes:
            c.start_node(node, mining=False)
        for node in c.nodes:
            await netlib.wait_healthy(s, node)
        await netlib.wait_peers(s, c.nodes, MEMORY_NODES - 1)
        result_file.write_text(json.dumps(await netlib.rpc(s, c.nodes[0].url, "chain_getHead")))
        port = netlib.free_ports(1)[0]
        bare = netlib.spawn_bare_rpc(port, result_file, c.tmp / "bare.log")
        c.procs.append(bare)
        interp = netlib.spawn("bare-python", [sys.executable, "-c", "import time; time.sleep(120)"], None)
        c.procs.append(interp)
        await netlib.wait_healthy(s, netlib.Node(-1, c.tmp, 0, port, bare))
        for _ in range(20):  # both servers have answered a few calls before they idle
            for url in [n.url for n in c.nodes] + [f"http://127.0.0.1:{port}"]:
                await netlib.rpc(s, url, "chain_getHead")
        await asyncio.sleep(IDLE_S)
        nodes = []
        for node in c.nodes:
            children = node.proc.note_children()
            kinds = {"worker": 0, "tracker": 0, "other": 0}
            for pid in children:
                line = netlib.cmdline(pid)
                kind = "worker" if "spawn_main" in line else "tracker" if "resource_tracker" in line else "other"
                kinds[kind] += netlib.rss_kib(pid)
            nodes.append({"node": netlib.rss_kib(node.proc.pid), "children": len(children), **kinds})
        return {"nodes": nodes, "bare": netlib.rss_kib(bare.pid), "interp": netlib.rss_kib(interp.pid)}


def main(quick: bool = False) -> list[Figure]:
    blocks = 30 if quick else 300
    repeat = 2 if quick else 7
    cores = os.cpu_count() or 1
    with netlib.terminate_on_sigterm():
        c = netlib.Cluster(1, accounts=ACCOUNTS, seed=SEED, mining=False)
        try:
            # The same home serves both: its genesis is replaced by one a few minutes old with the
            # easiest difficulty, and the fresh runs simply start without the store.
            genesis = easy_genesis(int(time.time() * 1000) - (blocks + 30) * 1_100)
            for path in (c.out / "genesis.json", c.nodes[0].home / "genesis.json"):
                path.write_text(genesis.to_json() + "\n")
            stored = c.tmp / "stored.sqlite"
            t = time.perf_counter()
            with ProcessPoolExecutor(max_workers=cores) as pool:
                mine_store(genesis, blocks, stored, pool)
            mine_s = time.perf_counter() - t
            load_s, loaded = load_blocks_seconds(genesis, stored, repeat)
            starts = asyncio.run(measure_starts(c, stored, repeat))
        finally:
            c.close()
        with netlib.cluster(MEMORY_NODES, accounts=8, seed=SEED + "-memory", mining=False) as c:
            mem = asyncio.run(measure_memory(c))

    b = starts["best"]
    sizes = f"best of {repeat} starts after one warm-up, /health polled every {POLL_S * 1000:.0f} ms; {netlib.machine_note()}"
    per_node = [n["node"] + n["worker"] + n["tracker"] + n["other"] for n in mem["nodes"]]
    node_mib = sum(per_node) / len(per_node) / 1024
    proc_mib = sum(n["node"] for n in mem["nodes"]) / len(per_node) / 1024
    worker_mib = sum(n["worker"] for n in mem["nodes"]) / len(per_node) / 1024
    tracker_mib = sum(n["tracker"] for n in mem["nodes"]) / len(per_node) / 1024
    children = max(n["children"] for n in mem["nodes"])
    mem_limit = (mem["bare"] + children * mem["interp"]) / 1024
    stored_limit = b["bare"] + load_s
    def phases(kind: str) -> str:
        starting, started = starts["phases"].get(kind, (float("nan"), float("nan")))
        return (f"log lines: node_starting (interpreter up, code imported, settings read) at {starting * 1000:.0f} ms, "
                f"node_started (store loaded, listening) at {started * 1000:.0f} ms after spawn")

    return [
        Figure(BENCHMARK, "node start-up, fresh home (spawn to /health)", b["fresh"] * 1000, "ms",
               b["bare"] * 1000, "bare aiohttp JSON-RPC server process, spawn to /health, this run",
               b["bare"] / b["fresh"], GOAL_RATIO, note=f"{phases('fresh')}; {sizes}"),
        Figure(BENCHMARK, f"node start-up, home with {blocks} stored blocks", b["stored"] * 1000, "ms",
               stored_limit * 1000, f"bare server start + {load_s * 1000:.0f} ms to read and decode the {loaded} "
                                    "blocks from SQLite, this run",
               stored_limit / b["stored"], GOAL_RATIO,
               note=f"{blocks * TRANSFERS_PER_BLOCK} transfers in the blocks; the node's store_loaded log says "
                    f"{starts['replay_s'] * 1000:.0f} ms to load and replay; mining the store took {mine_s:.1f} s "
                    f"(not timed); {phases('stored')}; {sizes}"),
        Figure(BENCHMARK, "idle memory per node, node + miner worker + resource tracker (VmRSS)", node_mib, "MiB",
               mem_limit, f"idle bare aiohttp server + {children} bare Python interpreter(s), this run",
               mem_limit / node_mib, GOAL_RATIO,
               note=f"mean of {MEMORY_NODES} idle nodes (mining off, {IDLE_S:g} s idle): node process "
                    f"{proc_mib:.1f} MiB, miner worker {worker_mib:.1f} MiB, resource tracker {tracker_mib:.1f} MiB; "
                    f"bare server {mem['bare'] / 1024:.1f} MiB, bare interpreter {mem['interp'] / 1024:.1f} MiB; "
                    f"a node just restarted with {blocks} blocks: {starts['stored_rss_kib'] / 1024:.1f} MiB in all"),
    ]


if __name__ == "__main__":
    cli(BENCHMARK, main, __doc__.split("\n")[0])
