"""The miner: the pure nonce search (consensus.pow.mining) in a worker process.

The node's core decides what to mine (`Ready.mining`); this shell only searches. Work
is searched in slices so a new head or a new template takes effect within one slice,
and slices are paced so the node tries at most `hashrate` hashes per second (the
per-node cap that keeps a testnet of several miners on one machine fair and cool).
Every hash tried is reported to the core in `MinerReport`s, at least once a second.
"""

import asyncio
import multiprocessing
import os
import signal
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Awaitable, Callable

from consensus.pow.mining import NONCE_MAX, search_prefix
from node.core import MinerReport, MiningWork

SLICE_S = 0.1  # a slice lasts about this long, so new work is picked up within it
UNCAPPED_SLICE_HASHES = 50_000  # about 0.05-0.1 s of hashing in CPython
REPORT_EVERY_S = 1.0


def _warm() -> int:
    return 0


def _watch_parent(parent_pid: int) -> None:
    while True:
        if os.getppid() != parent_pid:
            os._exit(0)
        time.sleep(0.5)


def _worker_init(parent_pid: int) -> None:
    """In the worker: leave Ctrl-C to the node, and exit when the node is gone, even after
    a SIGKILL gave it no chance to stop us (otherwise an orphan would keep hashing)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True).start()


class Miner:
    def __init__(self, hashrate: int, report: Callable[[MinerReport], Awaitable[None]]):
        self.hashrate = hashrate  # 0 means no cap
        self.report = report
        self.work: MiningWork | None = None
        self._changed = asyncio.Event()
        self.hashes_total = 0
        # spawn: the worker must not inherit the event loop, sockets or the store.
        self.pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                                        initializer=_worker_init, initargs=(os.getpid(),))

    def set_work(self, work: MiningWork | None) -> None:
        self.work = work
        self._changed.set()

    def cap(self, work: MiningWork) -> int:
        """Hashes per second allowed for `work`; 0 = none. miner_generate is on demand and,
        like Bitcoin regtest's generate, runs as fast as the worker can."""
        return 0 if work.on_demand else self.hashrate

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self.pool, _warm)  # start the worker now, not at the first block
        while True:
            await self._changed.wait()
            self._changed.clear()
            work = self.work
            if work is not None:
                await self._search(loop, work)

    async def _search(self, loop: asyncio.AbstractEventLoop, work: MiningWork) -> None:
        nonce = 0
        started = time.monotonic()
        tried = 0  # since `started`, for pacing
        unreported = 0
        last_report = started
        cap = self.cap(work)
        slice_hashes = max(1, int(cap * SLICE_S)) if cap else UNCAPPED_SLICE_HASHES
        while self.work is work and nonce <= NONCE_MAX:
            result = await loop.run_in_executor(self.pool, search_prefix, work.prefix, work.target, nonce,
                                                slice_hashes)
            nonce += result.hashes
            tried += result.hashes
            unreported += result.hashes
            self.hashes_total += result.hashes
            now = time.monotonic()
            if result.nonce is not None:
                await self.report(MinerReport(work.work_id, result.nonce, unreported))
                return  # the core answers with new work (or none)
            if now - last_report >= REPORT_EVERY_S:
                await self.report(MinerReport(work.work_id, None, unreported))
                unreported, last_report = 0, now
            if cap:
                delay = started + tried / cap - time.monotonic()
                if delay > 0 and self.work is work:
                    try:
                        async with asyncio.timeout(delay):
                            await self._changed.wait()
                    except TimeoutError:
                        pass  # paced: time for the next slice
        if unreported:
            await self.report(MinerReport(work.work_id, None, unreported))

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
