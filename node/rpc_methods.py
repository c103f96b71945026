"""JSON-RPC methods over the node core (DESIGN.md section 3), pure: a call in, a result out.

Each method checks its parameters and raises RpcError with a clear message; the
aiohttp server in the shell only moves JSON. Amounts are integers; hashes, ids and
raw bytes are lowercase hex.
"""

from typing import Any, Callable

from consensus.chain import Entry
from consensus.crypto import ADDRESS_BYTES, HASH_BYTES
from consensus.errors import DecodeError, InvalidTransaction
from consensus.types import Block, Transaction, decode_transaction
from node.core import (
    APP_ERROR,
    DEFERRED,
    INVALID_PARAMS,
    METHOD_NOT_FOUND,
    NOT_FOUND,
    TX_REJECTED,
    NodeCore,
    RpcCalled,
    RpcError,
)
from node.mempool import MempoolRejected

TX_HEX_CHARS_MAX = 2 * 4096


# --- parameter readers -----------------------------------------------------------


def _params(call: RpcCalled, names: list[str], required: int) -> list[Any]:
    """Positional or named parameters as a list in `names` order (missing -> None)."""
    params = call.params
    if params is None:
        params = []
    if isinstance(params, dict):
        unknown = sorted(set(params) - set(names))
        if unknown:
            raise RpcError(INVALID_PARAMS, f"unknown parameter(s) {', '.join(unknown)}; expected {', '.join(names) or 'none'}")
        values = [params.get(n) for n in names]
    elif isinstance(params, list):
        if len(params) > len(names):
            raise RpcError(INVALID_PARAMS, f"{call.method} takes at most {len(names)} parameter(s), got {len(params)}")
        values = list(params) + [None] * (len(names) - len(params))
    else:
        raise RpcError(INVALID_PARAMS, "params must be an array or an object")
    for name, value in zip(names[:required], values[:required]):
        if value is None:
            raise RpcError(INVALID_PARAMS, f"{call.method} needs the parameter {name!r}")
    return values


def _hex(value: Any, name: str, length: int | None = None, chars_max: int = 256) -> bytes:
    if not isinstance(value, str) or len(value) > chars_max:
        raise RpcError(INVALID_PARAMS, f"{name} must be a hex string")
    text = value[2:] if value.startswith("0x") else value
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raise RpcError(INVALID_PARAMS, f"{name} is not valid hex") from None
    if length is not None and len(raw) != length:
        raise RpcError(INVALID_PARAMS, f"{name} must be {length} bytes ({2 * length} hex characters), got {len(raw)}")
    return raw


def _int(value: Any, name: str, minimum: int, maximum: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not minimum <= value <= maximum:
        raise RpcError(INVALID_PARAMS, f"{name} must be an integer in {minimum}..{maximum}")
    return value


def _bool(value: Any, name: str, default: bool) -> bool:
    if value is None:
        return default
    if not isinstance(value, bool):
        raise RpcError(INVALID_PARAMS, f"{name} must be true or false")
    return value


# --- views -----------------------------------------------------------------------


def transaction_json(tx: Transaction) -> dict:
    return {
        "txid": tx.txid.hex(),
        "kind": tx.kind,
        "chain_id": tx.chain_id,
        "sender": tx.sender_address.hex(),
        "sender_public_key": tx.sender.hex(),
        "recipient": tx.recipient.hex(),
        "amount": tx.amount,
        "fee": tx.fee,
        "nonce": tx.nonce,
    }


def block_json(core: NodeCore, entry: Entry, full: bool) -> dict:
    block: Block = entry.block
    h = block.header
    canonical = core.tree.canonical_at(h.height) is entry
    return {
        "hash": entry.hash.hex(),
        "height": h.height,
        "parent": h.parent.hex(),
        "timestamp_ms": h.timestamp_ms,
        "tx_root": h.tx_root.hex(),
        "state_root": h.state_root.hex(),
        "producer": h.producer.hex(),
        "bits": f"{h.bits:#010x}",
        "nonce": h.nonce.hex(),
        "consensus_root": h.consensus_root.hex(),
        "consensus_bytes": len(block.consensus),
        "seal": block.seal.hex(),
        "score": str(entry.score),
        "canonical": canonical,
        "confirmations": core.tree.head.height - h.height + 1 if canonical else 0,
        "transactions": [transaction_json(t) for t in block.transactions] if full else [t.txid.hex() for t in block.transactions],
    }


def head_json(core: NodeCore) -> dict:
    head = core.tree.head
    out = {
        "hash": head.hash.hex(),
        "height": head.height,
        "timestamp_ms": head.header.timestamp_ms,
        "state_root": head.header.state_root.hex(),
        "final_height": core.tree.final_height,
    }
    out.update(core.engine.status(core.tree))
    out["total_work"] = str(head.score)
    return out


# --- methods ---------------------------------------------------------------------


def chain_getHead(core: NodeCore, call: RpcCalled) -> Any:
    _params(call, [], 0)
    return head_json(core)


def _entry_by_hash_or_height(core: NodeCore, value: Any) -> Entry:
    if isinstance(value, int) and not isinstance(value, bool):
        entry = core.tree.canonical_at(value)
        if entry is None:
            raise RpcError(NOT_FOUND, f"no block at height {value}; the head is at {core.tree.head.height}")
        return entry
    found = core.tree.get(_hex(value, "hash_or_height", HASH_BYTES))
    if found is None:
        raise RpcError(NOT_FOUND, f"block {value} is not known")
    return found


def chain_getBlock(core: NodeCore, call: RpcCalled) -> Any:
    which, full = _params(call, ["hash_or_height", "full"], 1)
    full = _bool(full, "full", False)  # parameters are checked before anything is looked up
    return block_json(core, _entry_by_hash_or_height(core, which), full)


def chain_getBlockHash(core: NodeCore, call: RpcCalled) -> Any:
    (height,) = _params(call, ["height"], 1)
    return _entry_by_hash_or_height(core, _int(height, "height", 0, 2**63)).hash.hex()


def chain_getTips(core: NodeCore, call: RpcCalled) -> Any:
    _params(call, [], 0)
    head = core.tree.head
    tips = []
    for entry in core.tree.tips()[:64]:
        fork = core.tree.common_ancestor(entry, head)
        tips.append({
            "hash": entry.hash.hex(),
            "height": entry.height,
            "branch_length": entry.height - fork.height,
            "status": "active" if entry is head else "valid-fork",
            "score": str(entry.score),
        })
    return tips


def chain_getAccount(core: NodeCore, call: RpcCalled) -> Any:
    (address,) = _params(call, ["address"], 1)
    raw = _hex(address, "address", ADDRESS_BYTES)
    account = core.tree.head_state().get(raw)
    pending = len(core.mempool.by_sender.get(raw, {}))
    return {"address": raw.hex(), "balance": account.balance, "nonce": account.nonce, "pending": pending,
            "height": core.tree.head.height}


def chain_getTransaction(core: NodeCore, call: RpcCalled) -> Any:
    (txid_hex,) = _params(call, ["txid"], 1)
    txid = _hex(txid_hex, "txid", HASH_BYTES)
    if txid in core.mempool.by_id:
        return {"status": "pending", "transaction": transaction_json(core.mempool.by_id[txid])}
    height = core.tree.transaction_location(txid)
    if height is None:
        raise RpcError(NOT_FOUND, f"transaction {txid.hex()} is neither pending nor in the canonical chain")
    entry = core.tree.canonical[height]
    tx = next(t for t in entry.block.transactions if t.txid == txid)
    return {
        "status": "finalized" if height <= core.tree.final_height else "included",
        "height": height,
        "block": entry.hash.hex(),
        "confirmations": core.tree.head.height - height + 1,
        "transaction": transaction_json(tx),
    }


def chain_getSupply(core: NodeCore, call: RpcCalled) -> Any:
    """The head state's supply figures, computed as sim.invariants.view_of_core does, so an
    invariant check over RPC (testnet.observe) judges a real node by the simulator's rule.
    One call is one snapshot: every figure belongs to the block named by `head`."""
    _params(call, [], 0)
    tree = core.tree
    state = tree.head_state()
    engine_issued = state.engine.issued if state.engine is not None else 0
    return {
        "total_balance": state.total_balance(),
        "expected_supply": state.expected_supply(),
        "issued": state.issued,
        # Block rewards, plus what the engine issued itself (proof of stake: vote rewards).
        "expected_issued": tree.params.block_reward * tree.head.height + engine_issued,
        "burned": state.burned,
        "height": tree.head.height,
        "head": tree.head.hash.hex(),
        "final_height": tree.final_height,
        # The root recomputed from the head state, to compare with the root the head block commits to.
        "head_state_root": state.root().hex(),
        "slashed": state.engine.slashed() if state.engine is not None else [],
    }


def tx_send(core: NodeCore, call: RpcCalled) -> Any:
    (raw_hex,) = _params(call, ["hex"], 1)
    raw = _hex(raw_hex, "hex", chars_max=TX_HEX_CHARS_MAX)
    try:
        tx = decode_transaction(raw)
    except DecodeError as exc:
        raise RpcError(INVALID_PARAMS, f"not a transaction: {exc}") from None
    try:
        return core.submit_transaction(tx).hex()
    except (InvalidTransaction, MempoolRejected) as exc:
        raise RpcError(TX_REJECTED, f"transaction rejected ({type(exc).__name__}): {exc}") from None


def mempool_status(core: NodeCore, call: RpcCalled) -> Any:
    _params(call, [], 0)
    pool = core.mempool
    return {"size": len(pool), "senders": len(pool.by_sender), "capacity": pool.transactions_max,
            "rejected": pool.rejected, "evicted": pool.evicted}


def mempool_list(core: NodeCore, call: RpcCalled) -> Any:
    (limit,) = _params(call, ["limit"], 0)
    limit = core.config.mempool_list_max if limit is None else _int(limit, "limit", 1, core.config.mempool_list_max)
    return [transaction_json(t) for t in core.mempool.list(limit)]


def net_info(core: NodeCore, call: RpcCalled) -> Any:
    _params(call, [], 0)
    ready = [p for p in core.peers.values() if p.ready]
    return {
        "node_id": core.node_id,
        "public_key": core.key.public_key.hex(),
        "listen_address": core.config.listen_address,
        "chain_id": core.genesis.chain_id,
        "genesis_hash": core.genesis.hash.hex(),
        "peers": len(ready),
        "outbound": sum(1 for p in ready if p.outbound),
        "inbound": sum(1 for p in ready if not p.outbound),
        "known_addresses": len(core.addresses),
        "gossip": {"first": core.router.messages_first, "duplicates": core.router.messages_duplicate,
                   "published": core.router.messages_published,
                   "duplicates_per_message": round(core.router.duplicates_per_message(), 3)},
        "orphans": len(core.orphans),
        "bans": core.scores.list_bans(core.now_ms),
    }


def net_peers(core: NodeCore, call: RpcCalled) -> Any:
    _params(call, [], 0)
    out = []
    for conn_id in sorted(core.peers):
        p = core.peers[conn_id]
        out.append({
            "node_id": p.node_id, "address": p.address, "listen_address": p.listen_address,
            "outbound": p.outbound, "state": p.conn.state.value,
            "head_height": p.head.height if p.head else None,
            "head_hash": p.head.hash.hex() if p.head else None,
            "connected_ms": p.connected_ms, "score": core.scores.scores.get(p.node_id or p.address, 0),
        })
    return out


def net_addPeer(core: NodeCore, call: RpcCalled) -> Any:
    (address,) = _params(call, ["address"], 1)
    if not isinstance(address, str) or not 0 < len(address) <= core.p2p.listen_address_chars_max or ":" not in address:
        raise RpcError(INVALID_PARAMS, "address must be host:port")
    core.scores.clear(address)
    core.add_peer_address(address, persistent=True)
    core.addresses[address].next_dial_ms = 0
    return {"address": address, "added": True}


def net_removePeer(core: NodeCore, call: RpcCalled) -> Any:
    (node_id,) = _params(call, ["node_id"], 1)
    if not isinstance(node_id, str):
        raise RpcError(INVALID_PARAMS, "node_id must be a string")
    if not core.remove_peer(node_id):
        raise RpcError(NOT_FOUND, f"no connected peer with node id {node_id}")
    return {"node_id": node_id, "removed": True}


def net_listBans(core: NodeCore, call: RpcCalled) -> Any:
    _params(call, [], 0)
    return core.scores.list_bans(core.now_ms)


def net_clearBan(core: NodeCore, call: RpcCalled) -> Any:
    (key,) = _params(call, ["peer"], 1)
    if not isinstance(key, str):
        raise RpcError(INVALID_PARAMS, "peer must be a node id or an address")
    return {"peer": key, "cleared": core.scores.clear(key)}


def consensus_status(core: NodeCore, call: RpcCalled) -> Any:
    _params(call, [], 0)
    status = core.engine.status(core.tree)
    status.update({
        "height": core.tree.head.height,
        "final_height": core.tree.final_height,
        "mining": core.mining_enabled and core.engine.minable,
        "hashes_tried": core.hashes_tried,
        "blocks_mined": core.blocks_mined,
        "reorgs": core.reorgs,
        "deepest_reorg": core.deepest_reorg,
        "supply": core.tree.head_state().expected_supply(),
        "burned": core.tree.head_state().burned,
        "issued": core.tree.head_state().issued,
        "blocks_proposed": core.blocks_proposed,
        "votes_made": core.votes_made,
    })
    status["difficulty_work"] = str(status.get("difficulty_work", ""))
    status["total_work"] = str(status.get("total_work", ""))
    return status


def consensus_validators(core: NodeCore, call: RpcCalled) -> Any:
    _params(call, [], 0)
    return core.engine.validators_json(core.tree)


def consensus_slashings(core: NodeCore, call: RpcCalled) -> Any:
    _params(call, [], 0)
    return core.engine.slashings_json(core.tree)


def miner_generate(core: NodeCore, call: RpcCalled) -> Any:
    (count,) = _params(call, ["n"], 1)
    count = _int(count, "n", 1, core.config.generate_blocks_max)
    if not core.engine.minable:
        raise RpcError(APP_ERROR, f"this is a {core.engine.name} chain: blocks come from its validators, not from mining")
    core.generate_pending.append([call.request_id, count, []])
    return DEFERRED


def miner_start(core: NodeCore, call: RpcCalled) -> Any:
    _params(call, [], 0)
    if not core.engine.minable:
        raise RpcError(APP_ERROR, f"this is a {core.engine.name} chain: blocks come from its validators, not from mining")
    core.mining_enabled = True
    return {"mining": True}


def miner_stop(core: NodeCore, call: RpcCalled) -> Any:
    _params(call, [], 0)
    core.mining_enabled = False
    return {"mining": False}


METHODS: dict[str, Callable[[NodeCore, RpcCalled], Any]] = {
    f.__name__: f
    for f in (
        chain_getHead, chain_getBlock, chain_getBlockHash, chain_getTips, chain_getAccount, chain_getTransaction,
        chain_getSupply,
        tx_send, mempool_status, mempool_list, net_info, net_peers, net_addPeer, net_removePeer, net_listBans,
        net_clearBan, consensus_status, consensus_validators, consensus_slashings, miner_generate, miner_start,
        miner_stop,
    )
}

# Methods that change the node; the shell asks for the cookie token before these.
# The admin_* methods (transport faults, node/faults.py) are answered by the shell itself,
# never by this table; admin_getFaults is privileged too, as part of the chaos tooling.
PRIVILEGED = frozenset({"net_addPeer", "net_removePeer", "net_clearBan", "miner_generate", "miner_start", "miner_stop",
                        "admin_setFaults", "admin_getFaults", "admin_clearFaults"})


def dispatch(core: NodeCore, call: RpcCalled) -> Any:
    method = METHODS.get(call.method)
    if method is None:
        raise RpcError(METHOD_NOT_FOUND, f"method {call.method!r} does not exist")
    return method(core, call)
