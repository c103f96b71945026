"""Block codec: encode + decode of a 1,000-transaction block against raw msgpack.

Figure: `Block.encode()` then `consensus.types.decode_block(...)` of a block of 1,000
signed transfers: the canonical codec with everything it adds on the way in (the
re-encode that rejects non-canonical bytes, a typed check of every field, the frozen
NamedTuples). Limit: `msgpack.packb` + `msgpack.unpackb` of the same nested data as plain
lists of the same field values, measured in the same run (the two encodings are checked
to be byte-identical). Ratio: raw time / our time, i.e. our throughput relative to raw
msgpack. Goal: ratio >= 0.5. Encode and decode alone are printed for context.

    python benchmarks/bench_codec.py [--quick] [--json]
"""

import random

import benchlib  # noqa: F401  (puts the repository on sys.path)
from benchlib import Figure, best_interleaved, cli

import msgpack

from consensus.crypto import KeyPair, sha256
from consensus.types import TX_TRANSFER, Block, BlockHeader, Transaction, compute_tx_root, consensus_root_of, decode_block

BENCHMARK = "codec"
GOAL_RATIO = 0.5
SEED = "bench-codec"


def build_block(count: int, senders: int = 100) -> Block:
    rng = random.Random(SEED)
    keys = [KeyPair.derive(SEED, "account", i) for i in range(senders)]
    chain_id = "chainlab-pow-bench"
    txs = []
    for n in range(count):
        i = n % senders
        tx = Transaction(TX_TRANSFER, chain_id, keys[i].public_key, keys[(i + 1) % senders].address,
                         rng.randrange(1, 10**9), rng.randrange(1, 1_000), n // senders, b"")
        txs.append(tx._replace(signature=keys[i].sign(tx.signing_bytes())))
    header = BlockHeader(1, 12_345, sha256(b"parent"), 1_700_000_123_456, compute_tx_root(txs),
                         sha256(b"state"), keys[0].address, 0x1F00FFFF, consensus_root_of(b""), rng.randbytes(8))
    return Block(header, tuple(txs))


def main(quick: bool = False) -> list[Figure]:
    count = 1_000
    number = 10 if quick else 30  # round trips per timed repetition
    repeat = 3 if quick else 15

    block = build_block(count)
    raw = [list(block.header), [list(tx) for tx in block.transactions], block.consensus, block.seal]
    data = block.encode()
    # Like for like: the same bytes, and our decoder gives back the same block.
    assert msgpack.packb(raw) == data
    assert decode_block(data) == block
    assert msgpack.unpackb(msgpack.packb(raw)) == raw

    fns = {
        "ours": lambda: decode_block(block.encode()),
        "raw": lambda: msgpack.unpackb(msgpack.packb(raw)),
        "ours_encode": block.encode,
        "raw_encode": lambda: msgpack.packb(raw),
        "ours_decode": lambda: decode_block(data),
        "raw_decode": lambda: msgpack.unpackb(data),
    }
    for fn in fns.values():  # warm up
        fn()
    best = best_interleaved(fns, repeat, number)

    def figure(name: str, ours: str, raw_: str, goal: float | None, note: str) -> Figure:
        return Figure(BENCHMARK, name, best[ours] * 1e3, "ms", best[raw_] * 1e3, f"raw msgpack {note}, this run",
                      best[raw_] / best[ours], goal, goal_text="raw time / our time" if goal else "")

    what = f"{count} transactions, {len(data):,} bytes, best of {repeat} x {number}"
    main_figure = figure("block encode + decode", "ours", "raw", GOAL_RATIO, "packb + unpackb")
    main_figure.note = f"{count / best['ours']:,.0f} transactions/s encoded and decoded; {what}"
    return [
        main_figure,
        figure("block encode alone (context)", "ours_encode", "raw_encode", None, "packb"),
        figure("block decode alone (context)", "ours_decode", "raw_decode", None, "unpackb"),
    ]


if __name__ == "__main__":
    cli(BENCHMARK, main, __doc__.split("\n")[0])
