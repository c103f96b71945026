"""Watching real nodes over JSON-RPC: ChainViews for the simulator's invariant checks,
and a timeline of every node's height while faults come and go.

`fetch_view` builds the same `sim.invariants.ChainView` that `view_of_core` builds from
a NodeCore in the simulator, so a real testnet is judged by the very same check
functions. A view is one consistent snapshot although the node keeps working while we
read it: `chain_getSupply` answers every head-state figure in one call, naming its head
block, and the chain is then read backwards from that block by parent hash. A block's
contents never change under its hash, so blocks are cached by hash and shared between
nodes and between snapshots; only new blocks cost a call.

`HeightSampler` polls `chain_getHead` on every node twice a second. A node that is
killed, paused or cut off does not answer in time: that sample is a gap, never an error.
Every call has a timeout; every collection has a bound.
"""

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable, Sequence

from node.client import NodeUnreachable, RpcCallError, RpcClient, read_cookie
from node.settings import SettingsError
from sim.invariants import ChainView

CALL_TIMEOUT_S = 5.0  # one RPC call to a healthy node on loopback takes milliseconds
SAMPLE_TIMEOUT_S = 0.8  # a sample must not hold up the next one, 0.5 s later
SAMPLE_INTERVAL_S = 0.5
VIEW_TIMEOUT_S = 60.0  # a whole snapshot of one node (a few hundred blocks, mostly cached)
BLOCK_CACHE_ENTRIES_MAX = 200_000  # blocks of every branch seen; a chaos run makes a few hundred
PREFETCH_BLOCKS_MAX = 128  # blocks asked for by height at once when the cache misses
FETCH_CONCURRENCY_MAX = 8  # calls in flight to one node while prefetching
SAMPLES_PER_NODE_MAX = 20_000  # 2 samples a second: well over two hours
SCAN_BLOCKS_PER_ROUND_MAX = 64  # deep-transaction scan: new heights looked at per node per round


class ObserveError(Exception):
    """A node could not be observed (down, timed out, or answered nonsense)."""


@dataclass(frozen=True)
class NodeHandle:
    """How to reach one node: its name in reports, its RPC URL, its home (for the cookie)."""

    name: str
    url: str
    home: Path | None = None

    def token(self) -> str | None:
        """The node's current RPC bearer token (rewritten at every start)."""
        if self.home is None:
            return None
        try:
            return read_cookie(self.home)
        except SettingsError:
            return None


class Clients:
    """One RpcClient per (node, timeout), opened lazily and closed together."""

    def __init__(self) -> None:
        self._clients: dict[tuple[str, float, bool], RpcClient] = {}

    def get(self, node: NodeHandle, timeout_s: float = CALL_TIMEOUT_S, privileged: bool = False) -> RpcClient:
        key = (node.url, timeout_s, privileged)
        client = self._clients.get(key)
        token = node.token() if privileged else None
        if client is not None and privileged and client.token != token:
            # The node restarted and wrote a new cookie: the old session carries the old token.
            self._clients.pop(key)
            asyncio.ensure_future(client.close())
            client = None
        if client is None:
            client = RpcClient(node.url, token, timeout_s=timeout_s)
            self._clients[key] = client
        return client

    async def call(self, node: NodeHandle, method: str, *params: Any, timeout_s: float = CALL_TIMEOUT_S,
                   privileged: bool = False) -> Any:
        """One call; ObserveError when the node is unreachable or answers with an error."""
        client = self.get(node, timeout_s, privileged)
        try:
            return await client.call(method, *params)
        except NodeUnreachable as exc:
            raise ObserveError(f"{node.name}: {exc.reason}") from None
        except RpcCallError as exc:
            raise ObserveError(f"{node.name}: {method} answered error {exc.code}: {exc.message}") from None

    async def close(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.close()


# --- views ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class BlockFacts:
    """What a ChainView needs of one block; immutable under its hash."""

    hash: bytes
    height: int
    parent: bytes
    state_root: bytes
    txids: tuple[bytes, ...]
    senders_nonces: tuple[tuple[bytes, int], ...]


def block_facts(block: Any) -> BlockFacts:
    """BlockFacts from chain_getBlock(..., full=true); ObserveError when it is not one."""
    try:
        txs = block["transactions"]
        return BlockFacts(
            hash=bytes.fromhex(block["hash"]),
            height=int(block["height"]),
            parent=bytes.fromhex(block["parent"]),
            state_root=bytes.fromhex(block["state_root"]),
            txids=tuple(bytes.fromhex(t["txid"]) for t in txs),
            senders_nonces=tuple((bytes.fromhex(t["sender"]), int(t["nonce"])) for t in txs),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ObserveError(f"not a full block from chain_getBlock: {type(exc).__name__}: {exc}") from None


class BlockCache:
    """Blocks by hash, shared between nodes; bounded (oldest entries go first)."""

    def __init__(self, entries_max: int = BLOCK_CACHE_ENTRIES_MAX):
        self.entries_max = entries_max
        self._blocks: dict[bytes, BlockFacts] = {}

    def get(self, block_hash: bytes) -> BlockFacts | None:
        return self._blocks.get(block_hash)

    def put(self, facts: BlockFacts) -> None:
        if facts.hash not in self._blocks and len(self._blocks) >= self.entries_max:
            self._blocks.pop(next(iter(self._blocks)))
        self._blocks[facts.hash] = facts

    def __len__(self) -> int:
        return len(self._blocks)


async def _fetch_block(clients: Clients, node: NodeHandle, cache: BlockCache, which: Any) -> BlockFacts:
    facts = block_facts(await clients.call(node, "chain_getBlock", which, True))
    cache.put(facts)
    return facts


async def _prefetch(clients: Clients, node: NodeHandle, cache: BlockCache, low: int, high: int) -> None:
    """Ask for the canonical blocks at heights low..high at once (a few calls in flight).
    The node's chain may move meanwhile; whatever comes back is cached by its hash and
    the walk by parent hash decides what belongs to the snapshot."""
    gate = asyncio.Semaphore(FETCH_CONCURRENCY_MAX)

    async def one(height: int) -> None:
        async with gate:
            with contextlib.suppress(ObserveError):  # a block that just went away: the walk asks by hash
                await _fetch_block(clients, node, cache, height)

    await asyncio.gather(*(one(h) for h in range(low, high + 1)))


async def fetch_chain(clients: Clients, node: NodeHandle, cache: BlockCache, head: bytes, height: int) -> list[BlockFacts]:
    """The chain from genesis to `head` (at `height`), read backwards by parent hash."""
    chain: list[BlockFacts] = []
    want, want_height = head, height
    while True:
        facts = cache.get(want)
        if facts is None:
            await _prefetch(clients, node, cache, max(0, want_height - PREFETCH_BLOCKS_MAX + 1), want_height)
            facts = cache.get(want) or await _fetch_block(clients, node, cache, want.hex())
        if facts.height != want_height:
            raise ObserveError(f"{node.name}: block {want.hex()[:16]} is at height {facts.height}, "
                               f"expected {want_height}")
        chain.append(facts)
        if facts.height == 0:
            break
        want, want_height = facts.parent, facts.height - 1
    chain.reverse()
    return chain


async def fetch_view(clients: Clients, node: NodeHandle, cache: BlockCache, *, timeout_s: float = VIEW_TIMEOUT_S) -> ChainView:
    """A ChainView of a real node, equal to what view_of_core gives for the same chain."""
    try:
        async with asyncio.timeout(timeout_s):
            supply = await clients.call(node, "chain_getSupply")
            try:
                head, height = bytes.fromhex(supply["head"]), int(supply["height"])
                slashed = supply.get("slashed")
                if slashed is None:  # a node without it in chain_getSupply: the validator registry
                    validators = await clients.call(node, "consensus_validators")
                    slashed = [v["index"] for v in validators if v.get("slashed")]
                figures = {k: int(supply[k]) for k in ("total_balance", "expected_supply", "issued",
                                                        "expected_issued", "final_height")}
                head_state_root = bytes.fromhex(supply["head_state_root"])
            except (KeyError, TypeError, ValueError) as exc:
                raise ObserveError(f"{node.name}: chain_getSupply answered without {exc}") from None
            chain = await fetch_chain(clients, node, cache, head, height)
    except TimeoutError:
        raise ObserveError(f"{node.name}: no complete snapshot within {timeout_s:g} s") from None
    return ChainView(
        node=node.name,
        hashes=[b.hash for b in chain],
        state_roots=[b.state_root for b in chain],
        txids=[list(b.txids) for b in chain],
        senders_nonces=[list(b.senders_nonces) for b in chain],
        total_balance=figures["total_balance"],
        expected_supply=figures["expected_supply"],
        issued=figures["issued"],
        expected_issued=figures["expected_issued"],
        final_height=figures["final_height"],
        head_state_root=head_state_root,
        extra={"slashed": sorted(int(i) for i in slashed)},
    )


async def fetch_views(clients: Clients, nodes: Sequence[NodeHandle], cache: BlockCache,
                      timeout_s: float = VIEW_TIMEOUT_S) -> dict[str, ChainView | str]:
    """A view of every node, concurrently: name -> ChainView, or the reason there is none."""
    async def one(node: NodeHandle) -> ChainView | str:
        try:
            return await fetch_view(clients, node, cache, timeout_s=timeout_s)
        except ObserveError as exc:
            return str(exc)

    results = await asyncio.gather(*(one(n) for n in nodes))
    return {n.name: r for n, r in zip(nodes, results)}


# --- heads and the timeline ----------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    t_s: float  # seconds since the sampler's start
    height: int | None  # None: the node did not answer in time (down, paused, cut off)
    head: str | None = None
    final_height: int | None = None
    finalized_epoch: int | None = None  # proof of stake


def sample_of(t_s: float, head: Any) -> Sample:
    finalized = head.get("finalized") if isinstance(head, dict) else None
    return Sample(t_s, int(head["height"]), str(head["hash"]), int(head.get("final_height", 0)),
                  int(finalized["epoch"]) if isinstance(finalized, dict) and "epoch" in finalized else None)


async def get_heads(clients: Clients, nodes: Sequence[NodeHandle], timeout_s: float = SAMPLE_TIMEOUT_S) -> dict[str, Any]:
    """chain_getHead of every node at once: name -> the head, or None for no answer in time."""
    async def one(node: NodeHandle) -> Any:
        try:
            async with asyncio.timeout(timeout_s + 0.2):
                return await clients.call(node, "chain_getHead", timeout_s=timeout_s)
        except (ObserveError, TimeoutError):
            return None

    heads = await asyncio.gather(*(one(n) for n in nodes))
    return {n.name: h for n, h in zip(nodes, heads)}


@dataclass
class HeightSampler:
    """Polls every node's head every `interval_s` into a per-node series of Samples."""

    clients: Clients
    nodes: Sequence[NodeHandle]
    interval_s: float = SAMPLE_INTERVAL_S
    timeout_s: float = SAMPLE_TIMEOUT_S
    clock: Callable[[], float] = time.monotonic
    t0: float | None = None
    samples: dict[str, list[Sample]] = field(default_factory=dict)
    on_sample: Callable[[dict[str, Sample]], Awaitable[None] | None] | None = None

    def __post_init__(self) -> None:
        if self.t0 is None:
            self.t0 = self.clock()
        for node in self.nodes:
            self.samples.setdefault(node.name, [])

    def now_s(self) -> float:
        assert self.t0 is not None
        return self.clock() - self.t0

    async def sample_once(self) -> dict[str, Sample]:
        t = round(self.now_s(), 3)
        heads = await get_heads(self.clients, self.nodes, self.timeout_s)
        round_samples = {}
        for name, head in heads.items():
            try:
                sample = sample_of(t, head) if head is not None else Sample(t, None)
            except (KeyError, TypeError, ValueError):
                sample = Sample(t, None)
            series = self.samples[name]
            if len(series) < SAMPLES_PER_NODE_MAX:
                series.append(sample)
            round_samples[name] = sample
        if self.on_sample is not None:
            result = self.on_sample(round_samples)
            if asyncio.iscoroutine(result):
                await result
        return round_samples

    async def run(self, stop: asyncio.Event) -> None:
        """Sample until `stop` is set; never raises for a node that misbehaves."""
        while not stop.is_set():
            began = self.clock()
            await self.sample_once()
            left = self.interval_s - (self.clock() - began)
            if left > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(left):
                        await stop.wait()

    def heights_timeline(self) -> dict[str, list[list[Any]]]:
        """name -> [[t_s, height], ...]; a gap (no answer) is [t_s, None]."""
        return {name: [[s.t_s, s.height] for s in series] for name, series in self.samples.items()}

    def final_heights(self) -> dict[str, list[int]]:
        """name -> the final heights the node reported, in order (gaps left out)."""
        return {name: [s.final_height for s in series if s.final_height is not None]
                for name, series in self.samples.items()}

    def last(self, name: str) -> Sample | None:
        """The latest answered sample of a node."""
        for sample in reversed(self.samples.get(name, [])):
            if sample.height is not None:
                return sample
        return None


# --- transactions deep in the chain --------------------------------------------------------


class DeepTracker:
    """Transactions once seen deep in some node's canonical chain: `k` blocks below its head
    (proof of work) or at or below its final height (proof of stake, `finalized=True`).

    The input of sim.invariants.check_no_included_lost: every transaction this records must
    be in every honest node's chain at the end. Each round looks at the heights that became
    deep since the last round, on every node, through the shared block cache.
    """

    def __init__(self, clients: Clients, nodes: Sequence[NodeHandle], cache: BlockCache, k: int, finalized: bool):
        self.clients = clients
        self.nodes = list(nodes)
        self.cache = cache
        self.k = k
        self.finalized = finalized
        self.scanned: dict[str, int] = {n.name: 0 for n in self.nodes}  # heights below this are done
        self.deep: dict[bytes, str] = {}

    def deep_limit(self, sample: Sample) -> int:
        """The highest height that counts as deep on a node that reported `sample`."""
        assert sample.height is not None
        if self.finalized:
            return sample.final_height or 0
        return sample.height - self.k

    async def scan(self, samples: dict[str, Sample]) -> None:
        async def one(node: NodeHandle) -> None:
            sample = samples.get(node.name)
            if sample is None or sample.height is None:
                return
            top = min(self.deep_limit(sample), self.scanned[node.name] + SCAN_BLOCKS_PER_ROUND_MAX - 1)
            for height in range(self.scanned[node.name], top + 1):
                try:
                    facts = await _fetch_block(self.clients, node, self.cache, height)
                except ObserveError:
                    return  # down again, or a reorg under our feet: the next round goes on
                for txid in facts.txids:
                    self.deep.setdefault(txid, f"{node.name} at height {height}")
                self.scanned[node.name] = height + 1

        await asyncio.gather(*(one(n) for n in self.nodes))


BAN_POLL_S = 2.0  # bans last a minute: a poll every 2 s sees each one
BANS_KEPT_MAX = 4_096


@dataclass
class BanWatcher:
    """Polls `net_listBans` and `net_info` on the observed nodes: who banned whom at some
    point of the run (a ban expires, so the end alone would miss it), and how many peers
    each node had at its last answer."""

    clients: Clients
    nodes: Sequence[NodeHandle]
    interval_s: float = BAN_POLL_S
    banned: dict[str, set[str]] = field(default_factory=dict)  # observer -> ban keys (node ids, addresses)
    peers: dict[str, int] = field(default_factory=dict)  # observer -> peers at its last answer

    async def poll_once(self) -> None:
        async def one(node: NodeHandle) -> None:
            with contextlib.suppress(ObserveError, KeyError, TypeError):  # down or paused: next poll
                bans = await self.clients.call(node, "net_listBans", timeout_s=SAMPLE_TIMEOUT_S)
                seen = self.banned.setdefault(node.name, set())
                for ban in bans:
                    if len(seen) < BANS_KEPT_MAX:
                        seen.add(str(ban["peer"]))
                info = await self.clients.call(node, "net_info", timeout_s=SAMPLE_TIMEOUT_S)
                self.peers[node.name] = int(info["peers"])

        await asyncio.gather(*(one(n) for n in self.nodes))

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.poll_once()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval_s):
                    await stop.wait()
