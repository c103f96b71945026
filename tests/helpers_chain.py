"""Shared builders for the consensus-core tests: keys, signed transfers, easy PoW
genesis files, block assembly (valid or deliberately broken) and a real miner.

Not a conftest on purpose: other suites may own tests/conftest.py. Import it as
`import helpers_chain` (pytest puts tests/ on sys.path in its default import mode).
"""

from consensus.chain import BlockTree, Entry
from consensus.crypto import KeyPair
from consensus.engine import make_engine
from consensus.genesis import Genesis
from consensus.params import CHAIN_PRESETS, ChainParams
from consensus.pow.difficulty import compact_to_target
from consensus.pow.mining import NONCE_MAX, hash_meets_target, search, with_nonce
from consensus.presets import account_key, make_genesis
from consensus.state import State, process_block_body
from consensus.types import (
    EMPTY_CONSENSUS_ROOT,
    BLOCK_VERSION,
    NONCE_BYTES,
    TX_TRANSFER,
    Block,
    BlockHeader,
    Transaction,
    compute_tx_root,
)

SEED = "chainlab"
ACCOUNTS = 8
BALANCE = 1_000_000_000
GENESIS_TIME_MS = 1_700_000_000_000

# An easy limit (about 4 expected hashes) and an easy first target (about 256 hashes):
# real mining stays in the microsecond range, and a retarget can still make the target
# four times harder or easier without hitting the limit.
EASY_LIMIT_BITS = 0x203FFFFF
EASY_GENESIS_BITS = 0x2000FFFF

# A clock far ahead of every block the tests build, so FutureBlock never fires by accident.
FAR_FUTURE_MS = GENESIS_TIME_MS + 10**12

MINIMAL = ChainParams(**CHAIN_PRESETS["minimal"])


def key(index: int) -> KeyPair:
    """Prefunded account `index` of the default test genesis."""
    return account_key(SEED, index)


def outsider(index: int = 0) -> KeyPair:
    """A key with no genesis balance."""
    return KeyPair.derive("outsider", "test", index)


def transfer(
    sender: KeyPair,
    recipient: bytes,
    amount: int,
    *,
    nonce: int,
    fee: int = 10,
    chain_id: str = f"chainlab-pow-{SEED}",
    kind: int = TX_TRANSFER,
) -> Transaction:
    """A transfer signed by `sender`."""
    unsigned = Transaction(kind, chain_id, sender.public_key, recipient, amount, fee, nonce, bytes(64))
    return unsigned._replace(signature=sender.sign(unsigned.signing_bytes()))


def pow_genesis(**overrides: int) -> Genesis:
    """The minimal PoW preset with easy targets; keyword arguments override parameters."""
    params = {"genesis_bits": EASY_GENESIS_BITS, "limit_bits": EASY_LIMIT_BITS}
    params.update(overrides)
    return make_genesis(
        consensus="pow", preset="minimal", seed=SEED, accounts=ACCOUNTS, balance=BALANCE,
        timestamp_ms=GENESIS_TIME_MS, overrides=params,
    )


def make_tree(genesis: Genesis | None = None, *, skip_pow: bool = False, check_signatures: bool = True) -> BlockTree:
    genesis = genesis or pow_genesis()
    return BlockTree(genesis, make_engine(genesis, skip_pow_check_for_simulation=skip_pow), check_signatures=check_signatures)


def mine_header(header: BlockHeader, *, slice_size: int = 1 << 16) -> BlockHeader:
    """The header with the first nonce whose hash meets the header's own bits."""
    target = compact_to_target(header.bits)
    start = 0
    while start <= NONCE_MAX:
        found = search(header, start, slice_size, target)
        if found.nonce is not None:
            mined = with_nonce(header, found.nonce)
            assert hash_meets_target(mined.hash, target)
            return mined
        start += slice_size
    raise AssertionError("no nonce meets the target")


def unmine_header(header: BlockHeader) -> BlockHeader:
    """The header with a nonce whose hash does NOT meet the header's bits."""
    target = compact_to_target(header.bits)
    for nonce in range(1 << 20):
        candidate = with_nonce(header, nonce)
        if not hash_meets_target(candidate.hash, target):
            return candidate
    raise AssertionError("every nonce meets the target")


def mine(block: Block) -> Block:
    return block._replace(header=mine_header(block.header))


def next_block(
    tree: BlockTree,
    *,
    parent: Entry | None = None,
    txs: tuple[Transaction, ...] = (),
    timestamp_ms: int | None = None,
    producer: bytes | None = None,
    do_mine: bool = True,
) -> Block:
    """A valid child of `parent` (the head by default) holding exactly `txs`.

    The timestamp defaults to one spacing after the parent. Unlike build_block, every
    transaction given is kept, so a skipped candidate can never hide a test's intent.
    """
    parent = parent or tree.head
    if timestamp_ms is None:
        timestamp_ms = parent.header.timestamp_ms + 1_000
    block = tree.build_block(txs, producer or key(0).address, timestamp_ms, parent=parent)
    assert block.transactions == tuple(txs), "a transaction given to next_block did not apply"
    assert block.header.timestamp_ms == timestamp_ms, "timestamp is not after the median time past"
    return mine(block) if do_mine else block


def assemble(
    tree: BlockTree,
    parent: Entry,
    txs: tuple[Transaction, ...],
    *,
    timestamp_ms: int,
    producer: bytes,
    bits: int | None = None,
    state_root: bytes | None = None,
    do_mine: bool = True,
) -> Block:
    """A block assembled by hand: no skipping, so invalid transactions stay in it.

    The state root is computed when the body applies; otherwise the parent's root is
    used (validation fails on the body before it reaches the root).
    """
    if state_root is None:
        try:
            state_root = process_block_body(
                parent.state, txs, producer, tree.chain_id, tree.params, check_signatures=False
            ).root()
        except Exception:
            state_root = parent.header.state_root
    header = BlockHeader(
        version=BLOCK_VERSION,
        height=parent.height + 1,
        parent=parent.hash,
        timestamp_ms=timestamp_ms,
        tx_root=compute_tx_root(txs),
        state_root=state_root,
        producer=producer,
        bits=tree.engine.next_bits(parent, tree) if bits is None else bits,
        consensus_root=EMPTY_CONSENSUS_ROOT,
        nonce=bytes(NONCE_BYTES),
    )
    block = Block(header, tuple(txs))
    return mine(block) if do_mine else block


def extend(tree: BlockTree, count: int, *, parent: Entry | None = None, spacing_ms: int = 1_000,
           producer: bytes | None = None, do_mine: bool = True) -> list[Entry]:
    """Add `count` empty blocks on `parent` (the head by default); returns their entries."""
    entries = []
    cursor = parent or tree.head
    for _ in range(count):
        block = next_block(tree, parent=cursor, timestamp_ms=cursor.header.timestamp_ms + spacing_ms,
                           producer=producer, do_mine=do_mine)
        added = tree.add_block(block, FAR_FUTURE_MS)
        cursor = added.entry
        entries.append(cursor)
    return entries


def state_snapshot(state: State) -> tuple:
    """Everything a State holds, for comparing before and after."""
    return (dict(state.accounts), state.genesis_supply, state.issued, state.burned)
