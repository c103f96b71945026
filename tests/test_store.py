"""The SQLite store: what is persisted comes back in order after a reopen, a store is
refused for another genesis or schema, and a node process killed with SIGKILL right
after a commit loses nothing that was committed."""

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from consensus.presets import account_key, make_genesis
from consensus.types import TX_TRANSFER, Transaction
from node.core import NodeConfig, NodeCore
from node.store import SqliteStore, StoreError


class FixedRng:
    def __init__(self):
        import random

        self._r = random.Random(7)

    def __getattr__(self, name):
        return getattr(self._r, name)


def mined_chain(genesis, blocks: int):
    core = NodeCore(genesis, account_key("node", 0), NodeConfig(), FixedRng(), genesis.timestamp_ms + 1000,
                    skip_pow_check_for_simulation=True)
    now = genesis.timestamp_ms
    out = []
    for _ in range(blocks):
        now += 1000
        block = core.tree.build_block([], core.producer, now)
        core.tree.add_block(block, now)
        out.append(block)
    return out


def transfer(genesis, nonce: int) -> Transaction:
    key = account_key("chainlab", 0)
    tx = Transaction(TX_TRANSFER, genesis.chain_id, key.public_key, account_key("chainlab", 1).address, 5, 1, nonce, b"")
    return tx._replace(signature=key.sign(tx.signing_bytes()))


def test_blocks_peers_and_transactions_come_back_in_order(tmp_path):
    genesis = make_genesis()
    blocks = mined_chain(genesis, 5)
    store = SqliteStore(tmp_path / "node.db", genesis_hash=genesis.hash)
    store.persist(blocks[:3], ["a:1"], [transfer(genesis, 0)])
    store.persist(blocks[3:] + blocks[:1], ["b:2", "a:1"], [transfer(genesis, 1)])  # duplicates are ignored
    store.close()
    store = SqliteStore(tmp_path / "node.db", genesis_hash=genesis.hash)
    assert [b.hash for b in store.load_blocks()] == [b.hash for b in blocks]
    assert store.load_peers() == ["a:1", "b:2"]
    assert [t.nonce for t in store.load_transactions()] == [0, 1]
    # A node built from the store resumes at the stored head.
    core = NodeCore(genesis, account_key("node", 1), NodeConfig(), FixedRng(), genesis.timestamp_ms,
                    stored_blocks=store.load_blocks(), stored_transactions=store.load_transactions(),
                    skip_pow_check_for_simulation=True)
    assert core.tree.head.hash == blocks[-1].hash
    assert len(core.mempool) == 2


def test_transactions_are_bounded_newest_kept(tmp_path):
    genesis = make_genesis()
    store = SqliteStore(tmp_path / "node.db", genesis_hash=genesis.hash, transactions_max=3)
    for nonce in range(5):
        store.persist([], [], [transfer(genesis, nonce)])
    assert [t.nonce for t in store.load_transactions()] == [2, 3, 4]


def test_a_store_of_another_genesis_is_refused_with_a_clear_message(tmp_path):
    SqliteStore(tmp_path / "node.db", genesis_hash=make_genesis(seed="one").hash).close()
    with pytest.raises(StoreError, match="belongs to genesis"):
        SqliteStore(tmp_path / "node.db", genesis_hash=make_genesis(seed="two").hash)


def test_a_store_of_another_schema_version_is_refused(tmp_path):
    genesis = make_genesis()
    store = SqliteStore(tmp_path / "node.db", genesis_hash=genesis.hash)
    store.db.execute("UPDATE meta SET value = '999' WHERE key = 'schema_version'")
    store.close()
    with pytest.raises(StoreError, match="schema version 999"):
        SqliteStore(tmp_path / "node.db", genesis_hash=genesis.hash)


def test_garbage_file_is_refused(tmp_path):
    (tmp_path / "node.db").write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match="cannot open the store"):
        SqliteStore(tmp_path / "node.db", genesis_hash=make_genesis().hash)


def test_sigkill_after_commits_loses_nothing_committed(tmp_path):
    """A child process commits blocks one Ready at a time, reporting each commit on
    stdout; we SIGKILL it mid-stream and check every reported commit is on disk."""
    script = textwrap.dedent(f"""
        import sys
        from consensus.presets import make_genesis
        from node.store import SqliteStore
        sys.path.insert(0, {str(os.path.dirname(__file__))!r})
        from test_store import mined_chain
        genesis = make_genesis()
        store = SqliteStore({str(tmp_path / "node.db")!r}, genesis_hash=genesis.hash)
        for i, block in enumerate(mined_chain(genesis, 400)):
            store.persist([block], [], [])
            print(i, flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    committed = -1
    for line in proc.stdout:
        committed = int(line)
        if committed >= 30:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    genesis = make_genesis()
    store = SqliteStore(tmp_path / "node.db", genesis_hash=genesis.hash)
    stored = store.load_blocks()
    assert len(stored) >= committed + 1
    assert [b.header.height for b in stored] == list(range(1, len(stored) + 1))
