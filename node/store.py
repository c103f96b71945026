"""SQLite storage behind the store port: what a node needs to resume after any crash.

One SQLite transaction per Ready: the blocks, peer addresses, acknowledged
transactions and (proof of stake) the validator's slashing-protection record of a Ready
are committed together, before anything of that Ready is sent (DESIGN.md section 2:
persist, then send, then reply).

Why these settings are safe:
- journal_mode=WAL: a commit appends to the write-ahead log; a crash at any moment
  leaves the database at the last commit, never half-written (SQLite's atomic commit).
- synchronous=FULL: the log is fsynced at every commit, so a commit that returned is
  on disk even if the machine loses power; WAL with NORMAL could lose the last commits,
  and a block or signature we already sent must not be forgotten.
- Blocks are rows in the order they were persisted; replaying them in that order
  always meets a block after its parent, so the node rebuilds the same tree.

The slashing-protection record (`Ready.persist_protection`, opaque bytes the core
encodes and decodes) is one row, replaced by each Ready that carries a new one. It is
safe against any crash because of the three points together:
- same transaction: the record commits with the blocks of its Ready or not at all, so
  after a crash the record never lags a block (our own proposal) that was stored;
- written before sends: the runtime calls `persist` before it queues any frame of the
  Ready, and the record covers every signature in that Ready, so no signature leaves
  the process unless the record that forbids signing its conflict is already on disk;
- synchronous=FULL: "on disk" means fsynced, so a power loss cannot roll the record
  back past a signature that was sent. A lost Ready (crash before its commit) sent
  nothing, so forgetting it is harmless: the validator may sign again what nobody saw.
"""

import sqlite3
from pathlib import Path

from consensus.types import Block, Transaction, decode_block, decode_transaction

# 2: blocks are stored in the format with an engine body and a seal (consensus_root).
# 3: the `protection` table (the validator's slashing-protection record).
SCHEMA_VERSION = 3


class StoreError(Exception):
    """The store cannot be opened or is not ours; the message says what to do."""


_META = "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS blocks (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    hash BLOB NOT NULL UNIQUE,
    height INTEGER NOT NULL,
    data BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS blocks_height ON blocks (height);
CREATE TABLE IF NOT EXISTS peers (address TEXT PRIMARY KEY, added_seq INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS transactions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    txid BLOB NOT NULL UNIQUE,
    data BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS protection (id INTEGER PRIMARY KEY CHECK (id = 1), data BLOB NOT NULL);
"""


class SqliteStore:
    def __init__(self, path: Path | str, *, genesis_hash: bytes, transactions_max: int = 20_000,
                 peers_max: int = 1_024):
        self.path = Path(path)
        self.transactions_max = transactions_max
        self.peers_max = peers_max
        try:
            self.db = sqlite3.connect(self.path, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.executescript(_META)
            # Check the version before creating tables, so a store we refuse is left as it was.
            self._check_meta(genesis_hash)
            self.db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"cannot open the store {self.path}: {exc}") from None
        except StoreError:
            self.db.close()
            raise
        self._peer_seq = self.db.execute("SELECT COALESCE(MAX(added_seq), 0) FROM peers").fetchone()[0]

    def _check_meta(self, genesis_hash: bytes) -> None:
        rows = dict(self.db.execute("SELECT key, value FROM meta"))
        if not rows:
            with self.db:
                self.db.execute("BEGIN")
                self.db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
                self.db.execute("INSERT INTO meta VALUES ('genesis_hash', ?)", (genesis_hash.hex(),))
            return
        if rows.get("schema_version") != str(SCHEMA_VERSION):
            raise StoreError(f"the store {self.path} has schema version {rows.get('schema_version')}, this chainlab "
                             f"reads version {SCHEMA_VERSION}; move it away to start afresh")
        if rows.get("genesis_hash") != genesis_hash.hex():
            raise StoreError(f"the store {self.path} belongs to genesis {rows.get('genesis_hash')}, not "
                             f"{genesis_hash.hex()}; use another home or delete the store")

    def persist(self, blocks: list[Block], peers: list[str], transactions: list[Transaction],
                protection: bytes | None = None) -> None:
        """Write one Ready's worth atomically and durably: all of it, or (on any error) none.

        `protection`: the validator's new slashing-protection record, replacing the old
        one; None leaves the stored record as it is.
        """
        if not (blocks or peers or transactions or protection is not None):
            return
        assert protection is None or isinstance(protection, bytes), "the protection record is bytes"
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            if protection is not None:
                self.db.execute("INSERT INTO protection (id, data) VALUES (1, ?) "
                                "ON CONFLICT (id) DO UPDATE SET data = excluded.data", (protection,))
            self.db.executemany(
                "INSERT OR IGNORE INTO blocks (hash, height, data) VALUES (?, ?, ?)",
                [(b.hash, b.header.height, b.encode()) for b in blocks],
            )
            for address in peers:
                self._peer_seq += 1
                self.db.execute("INSERT OR IGNORE INTO peers VALUES (?, ?)", (address, self._peer_seq))
            self.db.executemany(
                "INSERT OR IGNORE INTO transactions (txid, data) VALUES (?, ?)",
                [(t.txid, t.encode()) for t in transactions],
            )
            # Bounded like the mempool they refill: keep the newest.
            if transactions:
                self.db.execute("DELETE FROM transactions WHERE seq <= (SELECT MAX(seq) FROM transactions) - ?",
                                (self.transactions_max,))
            if peers:
                self.db.execute("DELETE FROM peers WHERE added_seq <= ? - ?", (self._peer_seq, self.peers_max))

    def load_blocks(self) -> list[Block]:
        return [decode_block(data) for (data,) in self.db.execute("SELECT data FROM blocks ORDER BY seq")]

    def load_transactions(self) -> list[Transaction]:
        return [decode_transaction(data) for (data,) in self.db.execute("SELECT data FROM transactions ORDER BY seq")]

    def load_protection(self) -> bytes | None:
        """The last slashing-protection record persisted, or None if none ever was."""
        row = self.db.execute("SELECT data FROM protection WHERE id = 1").fetchone()
        return None if row is None else bytes(row[0])

    def load_peers(self) -> list[str]:
        return [a for (a,) in self.db.execute("SELECT address FROM peers ORDER BY added_seq")]

    def close(self) -> None:
        self.db.close()
