"""Transfers applied per second through the real state transition, signatures checked.

Figure: N signed transfers from many prefunded accounts, applied in blocks by
`consensus.state.process_block_body(..., check_signatures=True)` from the genesis state.
Limit: raw Ed25519 verifications per second of the very same (key, signature, message)
triples with `cryptography` directly, measured in the same run. Verifying is the one
cost a transfer cannot avoid, so the ratio says how much the rest of the transition
(signing bytes, addresses, checks, state updates, the per-block state copy) adds.
Goal: ratio >= 0.8. The rate without signature checks is printed for context.

    python benchmarks/bench_transfers.py [--quick] [--json]
"""

import random

import benchlib  # noqa: F401  (puts the repository on sys.path)
from benchlib import Figure, best_interleaved, cli

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from consensus.crypto import verify as crypto_verify
from consensus.crypto import KeyPair
from consensus.params import ChainParams, params_from
from consensus.presets import account_key, make_genesis
from consensus.state import process_block_body, state_from_allocations
from consensus.types import TX_TRANSFER, Transaction

BENCHMARK = "transfers"
GOAL_RATIO = 0.8
SEED = "bench-transfers"


def build_transfers(accounts: int, count: int, seed: str, chain_id: str) -> list[Transaction]:
    """`count` signed transfers, round-robin over the accounts, in nonce order per sender."""
    rng = random.Random(seed)
    keys = [account_key(seed, i) for i in range(accounts)]
    txs = []
    for n in range(count):
        i, nonce = n % accounts, n // accounts
        recipient = keys[(i + 1 + rng.randrange(accounts - 1)) % accounts].address
        tx = Transaction(TX_TRANSFER, chain_id, keys[i].public_key, recipient,
                         rng.randrange(1, 10_000), rng.randrange(1, 100), nonce, b"")
        txs.append(tx._replace(signature=keys[i].sign(tx.signing_bytes())))
    return txs


def main(quick: bool = False) -> list[Figure]:
    accounts = 100 if quick else 1_000
    count = 300 if quick else 2_000
    block_size = 100 if quick else 500
    repeat = 5 if quick else 7

    genesis = make_genesis(accounts=accounts, seed=SEED)
    params = params_from(ChainParams, genesis)
    producer = KeyPair.derive(SEED, "producer", 0).address
    txs = build_transfers(accounts, count, SEED, genesis.chain_id)
    blocks = [tuple(txs[i:i + block_size]) for i in range(0, count, block_size)]
    genesis_state = state_from_allocations(genesis.allocations)
    # The limit's inputs are built beforehand: it measures Ed25519 alone.
    triples = [(tx.sender, tx.signature, tx.signing_bytes()) for tx in txs]

    def apply(check_signatures: bool):
        # consensus.crypto.verify memoises its answers; every pass starts without any, so
        # each signature is really checked, as for a block of transfers never seen before.
        crypto_verify.cache_clear()
        state = genesis_state
        for block in blocks:
            state = process_block_body(state, block, producer, genesis.chain_id, params,
                                       check_signatures=check_signatures)
        return state

    def verify_all() -> None:
        for public_key, signature, message in triples:
            Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)

    # Warm up, and check that every transfer really applied (a rejected one raises).
    final = apply(True)
    verify_all()
    apply(False)
    assert sum(final.get(account_key(SEED, i).address).nonce for i in range(accounts)) == count
    assert final.total_balance() == final.expected_supply()

    best = best_interleaved(
        {"verify": verify_all, "signed": lambda: apply(True), "unsigned": lambda: apply(False)},
        repeat,
    )
    verify_rate = count / best["verify"]
    signed_rate = count / best["signed"]
    unsigned_rate = count / best["unsigned"]
    per_tx_us = best["signed"] / count * 1e6
    verify_us = best["verify"] / count * 1e6
    sizes = f"{count} transfers from {accounts} accounts in blocks of {block_size}, best of {repeat}"
    limit_name = "raw Ed25519 verifications/s of the same messages, this run"
    return [
        Figure(BENCHMARK, "transfers applied with signature checks", signed_rate, "transfers/s",
               verify_rate, limit_name, signed_rate / verify_rate, GOAL_RATIO,
               note=f"{per_tx_us:.1f} us per transfer, of which Ed25519 {verify_us:.1f} us; {sizes}"),
        Figure(BENCHMARK, "transfers applied without signature checks (context)", unsigned_rate, "transfers/s",
               verify_rate, limit_name, unsigned_rate / verify_rate,
               note=f"{best['unsigned'] / count * 1e6:.2f} us per transfer for the transition alone"),
    ]


if __name__ == "__main__":
    cli(BENCHMARK, main, __doc__.split("\n")[0])
