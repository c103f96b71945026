"""The SQLite store: what is persisted comes back in order after a reopen, a store is
refused for another genesis or schema, the slashing-protection record commits with its
Ready's blocks or not at all, and a node process killed with SIGKILL right after a
commit loses nothing that was committed."""

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from consensus.presets import account_key, make_genesis
from consensus.types import TX_TRANSFER, Transaction
from node.core import NodeConfig, NodeCore
from node.store import SCHEMA_VERSION, SqliteStore, StoreError


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


def test_protection_record_round_trip_with_blocks_in_one_transaction(tmp_path):
    genesis = make_genesis()
    blocks = mined_chain(genesis, 3)
    store = SqliteStore(tmp_path / "node.db", genesis_hash=genesis.hash)
    assert store.load_protection() is None  # a new store: nothing signed yet
    store.persist(blocks[:1], [], [], b"record-1")
    assert store.load_protection() == b"record-1"
    store.persist(blocks[1:2], [], [])  # a Ready without a new record keeps the stored one
    assert store.load_protection() == b"record-1"
    store.persist([], [], [], b"record-2")  # a record alone (a vote, no block) is written too
    store.persist(blocks[2:], ["a:1"], [transfer(genesis, 0)], b"record-3\x00\xff")
    store.close()
    store = SqliteStore(tmp_path / "node.db", genesis_hash=genesis.hash)
    assert store.load_protection() == b"record-3\x00\xff"  # replaced, byte for byte
    assert [b.hash for b in store.load_blocks()] == [b.hash for b in blocks]
    assert store.db.execute("SELECT COUNT(*) FROM protection").fetchone()[0] == 1


class BrokenTransaction:
    """Encoding fails: a persist that raises after the protection record and blocks were written."""

    txid = b"\x01" * 32

    def encode(self) -> bytes:
        raise RuntimeError("disk full, say")


def test_a_persist_that_raises_leaves_neither_record_nor_blocks(tmp_path):
    genesis = make_genesis()
    blocks = mined_chain(genesis, 2)
    store = SqliteStore(tmp_path / "node.db", genesis_hash=genesis.hash)
    store.persist(blocks[:1], [], [], b"old")
    with pytest.raises(RuntimeError, match="disk full"):
        store.persist(blocks[1:], ["a:1"], [BrokenTransaction()], b"new")
    # Rolled back as one: the old record and the old blocks only, on this connection and on disk.
    assert store.load_protection() == b"old" and [b.hash for b in store.load_blocks()] == [blocks[0].hash]
    store.close()
    store = SqliteStore(tmp_path / "node.db", genesis_hash=genesis.hash)
    assert store.load_protection() == b"old"
    assert [b.hash for b in store.load_blocks()] == [blocks[0].hash] and store.load_peers() == []
    store.persist(blocks[1:], [], [], b"new")  # the store is usable afterwards
    assert store.load_protection() == b"new"


def test_a_store_of_the_previous_schema_is_refused_and_left_untouched(tmp_path):
    genesis = make_genesis()
    store = SqliteStore(tmp_path / "node.db", genesis_hash=genesis.hash)
    store.db.execute("DROP TABLE protection")
    store.db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION - 1),))
    store.close()
    with pytest.raises(StoreError, match=f"schema version {SCHEMA_VERSION - 1}, this chainlab reads version "
                                         f"{SCHEMA_VERSION}; move it away"):
        SqliteStore(tmp_path / "node.db", genesis_hash=genesis.hash)
    import sqlite3

    db = sqlite3.connect(tmp_path / "node.db")
    assert db.execute("SELECT name FROM sqlite_master WHERE name = 'protection'").fetchone() is None
    db.close()


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
    """A child process commits blocks one Ready at a time, each with a protection record
    naming it, reporting each commit on stdout; we SIGKILL it mid-stream and check every
    reported commit is on disk and the record matches the last block stored."""
    script = textwrap.dedent(f"""
        import sys
        from consensus.presets import make_genesis
        from node.store import SqliteStore
        sys.path.insert(0, {str(os.path.dirname(__file__))!r})
        from test_store import mined_chain
        genesis = make_genesis()
        store = SqliteStore({str(tmp_path / "node.db")!r}, genesis_hash=genesis.hash)
        for i, block in enumerate(mined_chain(genesis, 400)):
            store.persist([block], [], [], b"record-%d" % i)
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
    assert store.load_protection() == b"record-%d" % (len(stored) - 1)  # committed with its block, never apart
