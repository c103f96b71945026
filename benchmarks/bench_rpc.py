"""JSON-RPC requests per second: `chain_getHead` on a real node against a bare aiohttp server.

Figure: `chain_getHead` calls per second answered by one `chainlab node` process (not
mining, no peers), driven by an aiohttp client in this process that keeps a fixed
number of requests in flight over keep-alive connections until a fixed number were
answered; every reply is checked (JSON-RPC 2.0, a result, the right id).
Limit: the same client, same requests, against `bare_rpc_server.py`: an aiohttp
JSON-RPC handler in its own process that parses each request and answers a constant
of the same shape (the node's own `chain_getHead` result, read before timing). Both
are separate processes on the same machine, measured in turns, best of several.
Goal: ratio >= 0.7, i.e. what the node adds per call (envelope checks, the hop through
its driver inbox to the core, the core's step and Ready, the method) costs at most
~40% more than the HTTP and JSON work any aiohttp server does.

On a 2-core machine the aiohttp client needs about as much CPU per request as either
server, so requests/s is partly bounded by the client; the server processes' own CPU
time per request (from /proc, over the timed repetitions) is printed for context, and
its ratio does not depend on the client.

    python benchmarks/bench_rpc.py [--quick] [--json]
"""

import asyncio
import itertools
import json
import time

import benchlib  # noqa: F401  (puts the repository on sys.path)
from benchlib import Figure, cli

import netlib

BENCHMARK = "rpc"
GOAL_RATIO = 0.7
IN_FLIGHT = 32


async def hammer(url: str, requests: int, in_flight: int, session) -> float:
    """Seconds to get `requests` chain_getHead answers with `in_flight` requests outstanding."""
    ids = itertools.count(1)
    errors: list[str] = []

    async def worker() -> None:
        while True:
            request_id = next(ids)
            if request_id > requests:
                return
            body = json.dumps({"jsonrpc": "2.0", "method": "chain_getHead", "params": [], "id": request_id})
            async with session.post(url + "/", data=body, headers={"Content-Type": "application/json"}) as r:
                reply = json.loads(await r.read())
            if reply.get("id") != request_id or "result" not in reply or "hash" not in reply["result"]:
                errors.append(repr(reply)[:200])

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(in_flight)))
    elapsed = time.perf_counter() - start
    if errors:
        raise RuntimeError(f"{len(errors)} bad replies from {url}, e.g. {errors[0]}")
    return elapsed


async def measure(c: netlib.Cluster, requests: int, repeat: int) -> dict:
    node = c.nodes[0]
    async with netlib.session(limit=IN_FLIGHT) as s:
        c.start_node(node, mining=False)
        await netlib.wait_healthy(s, node)
        head = await netlib.rpc(s, node.url, "chain_getHead")
        result_file = c.tmp / "head.json"
        result_file.write_text(json.dumps(head))
        bare_port = netlib.free_ports(1)[0]
        bare = netlib.spawn_bare_rpc(bare_port, result_file, c.tmp / "bare.log")
        c.procs.append(bare)
        bare_url = f"http://127.0.0.1:{bare_port}"
        await netlib.wait_healthy(s, netlib.Node(-1, c.tmp, 0, bare_port, bare))
        # The bare reply must have the node's shape, so both send the same bytes.
        assert await netlib.rpc(s, bare_url, "chain_getHead") == head

        targets = {"node": node.url, "bare": bare_url}
        for url in targets.values():  # warm up: connections open, code paths hot
            await hammer(url, max(200, requests // 5), IN_FLIGHT, s)
        best = {name: float("inf") for name in targets}
        cpu = {name: 0.0 for name in targets}
        pids = {"node": node.proc.pid, "bare": bare.pid}
        for _ in range(repeat):
            for name, url in targets.items():
                cpu_before = netlib.cpu_seconds(pids[name])
                best[name] = min(best[name], await hammer(url, requests, IN_FLIGHT, s))
                cpu[name] += netlib.cpu_seconds(pids[name]) - cpu_before
        return {"best": best, "server_cpu": cpu}


def main(quick: bool = False) -> list[Figure]:
    requests = 500 if quick else 3_000
    repeat = 2 if quick else 5
    with netlib.cluster(1, accounts=2, seed="bench-rpc", mining=False) as c:
        m = asyncio.run(measure(c, requests, repeat))
    node_rate = requests / m["best"]["node"]
    bare_rate = requests / m["best"]["bare"]
    node_us = m["server_cpu"]["node"] / (requests * repeat) * 1e6
    bare_us = m["server_cpu"]["bare"] / (requests * repeat) * 1e6
    sizes = f"{requests} requests, {IN_FLIGHT} in flight, one aiohttp client, best of {repeat}; {netlib.machine_note()}"
    return [
        Figure(BENCHMARK, "chain_getHead requests answered by a node", node_rate, "requests/s",
               bare_rate, "bare aiohttp JSON-RPC server answering a constant of the same shape, this run",
               node_rate / bare_rate, GOAL_RATIO,
               note=sizes),
        Figure(BENCHMARK, "server CPU time per chain_getHead request (context)", node_us, "us",
               bare_us, "bare server's CPU time per request, this run", bare_us / node_us,
               note="utime+stime of the server process over every timed repetition / requests; "
                    "unlike requests/s this does not depend on how fast the client is"),
    ]


if __name__ == "__main__":
    cli(BENCHMARK, main, __doc__.split("\n")[0])
