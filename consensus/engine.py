"""The interface every consensus engine implements; nothing outside consensus/ branches
on which engine runs (DESIGN.md section 5)."""

from typing import TYPE_CHECKING, Any, Protocol

from consensus.genesis import Genesis
from consensus.types import Block, BlockHeader

if TYPE_CHECKING:
    from consensus.chain import BlockTree, Entry
    from consensus.state import State


class Engine(Protocol):
    name: str

    def genesis_bits(self) -> int:
        """The `bits` field of the genesis header (0 where the engine has none)."""

    def next_bits(self, parent: "Entry", tree: "BlockTree") -> int:
        """The `bits` a child of `parent` must carry."""

    def validate_header(self, header: BlockHeader, block_hash: bytes, parent: "Entry", tree: "BlockTree") -> None:
        """Engine rules for a header whose generic rules already passed; raises InvalidBlock."""

    def validate_body(self, block: Block, parent: "Entry", tree: "BlockTree") -> None:
        """Engine rules for the block's consensus body and seal; raises InvalidBlock."""

    def block_score(self, header: BlockHeader) -> int:
        """What the block adds to its branch's score (work, for proof of work)."""

    def initial_state(self, genesis: Genesis) -> Any:
        """The engine's part of the genesis state (State.engine); None if it keeps none."""

    def process_body(self, state: "State", block: Block, parent: "Entry", tree: "BlockTree") -> None:
        """Apply the block's engine effects to `state` (a copy, after its transactions),
        in place; raises InvalidBlock. The same call seals templates, so producers and
        validators compute one state root."""

    def choose_head(self, tree: "BlockTree", added: "Entry | None") -> "Entry":
        """Fork choice after a block was added (`added`) or votes changed (None)."""

    def final_height(self, tree: "BlockTree") -> int:
        """The height below which the canonical chain never changes."""

    # What the node core asks of every engine (capabilities, not names):
    minable: bool  # blocks come from a nonce search (the core's MiningWork)

    def make_producer(self, key: Any, stored_protection: bytes | None, byzantine: frozenset[str]) -> Any:
        """A validator's duties for the core to run each tick, or None (miners need none)."""

    def on_vote(self, tree: "BlockTree", payload: bytes) -> bool | None:
        """A gossiped vote: True accept and forward, None ignore, False the sender's fault."""

    def on_evidence(self, tree: "BlockTree", payload: bytes) -> bool | None:
        """Gossiped slashing evidence (topic EVIDENCE), same verdicts as on_vote: True
        accept and forward (kept for the next proposal), None ignore (known, offender
        already caught or slashed), False the sender's fault (malformed, forged, or not
        an offence)."""

    def take_new_evidence(self, tree: "BlockTree") -> list[bytes]:
        """Encoded evidence the engine found itself since the last call (in gossiped
        votes or in blocks), for the core to gossip on EVIDENCE; [] without slashing."""

    def validators_json(self, tree: "BlockTree") -> list[dict]:
        """The registry for consensus_validators ([] without one)."""

    def slashings_json(self, tree: "BlockTree") -> dict:
        """Slashings included and evidence waiting, for consensus_slashings."""

    def status(self, tree: "BlockTree") -> dict:
        """The engine's state for `consensus_status` (JSON-ready values)."""


def make_engine(genesis: Genesis, *, skip_pow_check_for_simulation: bool = False) -> Engine:
    """The engine named in genesis. Only the simulator sets the skip switch."""
    if genesis.consensus == "pow":
        from consensus.pow.engine import PowEngine

        return PowEngine.from_genesis(genesis, skip_pow_check_for_simulation=skip_pow_check_for_simulation)
    if genesis.consensus == "pos":
        from consensus.pos.engine import PosEngine

        return PosEngine.from_genesis(genesis)
    from consensus.errors import DecodeError

    raise DecodeError(f"unknown consensus engine {genesis.consensus!r}")
