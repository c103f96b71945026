"""The proof-of-work engine: retarget schedule, header check, most-work fork choice."""

from consensus.chain import BlockTree, Entry
from consensus.errors import InvalidBlock, InvalidProofOfWork
from consensus.genesis import Genesis
from consensus.params import params_from
from consensus.pow.difficulty import compact_to_target, next_target_bits, work_of_bits
from consensus.pow.mining import hash_meets_target
from consensus.pow.params import PowParams
from consensus.state import State
from consensus.types import Block, BlockHeader


class PowEngine:
    name = "pow"
    minable = True  # blocks come from a nonce search (the core's MiningWork)

    def __init__(self, params: PowParams, *, skip_pow_check_for_simulation: bool = False):
        self.params = params
        self.limit_target = compact_to_target(params.limit_bits)
        # Only the simulator sets this: its miner draws block times from the target
        # instead of hashing (as consensus-specs switches off BLS checks in tests).
        self.skip_pow_check = skip_pow_check_for_simulation

    @classmethod
    def from_genesis(cls, genesis: Genesis, *, skip_pow_check_for_simulation: bool = False) -> "PowEngine":
        return cls(params_from(PowParams, genesis), skip_pow_check_for_simulation=skip_pow_check_for_simulation)

    def genesis_bits(self) -> int:
        return self.params.genesis_bits

    def next_bits(self, parent: Entry, tree: BlockTree) -> int:
        """Bitcoin's schedule: keep the bits, except at each retarget interval boundary."""
        height = parent.height + 1
        interval = self.params.retarget_interval_blocks
        if height % interval != 0:
            return parent.header.bits
        # Like Bitcoin, the window spans interval - 1 block gaps: first = last - (interval - 1).
        first = tree.ancestor(parent, max(0, parent.height - (interval - 1)))
        return next_target_bits(
            parent.header.bits,
            first.header.timestamp_ms,
            parent.header.timestamp_ms,
            timespan=self.params.retarget_timespan_ms,
            limit_bits=self.params.limit_bits,
        )

    def validate_header(self, header: BlockHeader, block_hash: bytes, parent: Entry, tree: BlockTree) -> None:
        # The difficulty follows the retarget schedule exactly.
        expected = self.next_bits(parent, tree)
        if header.bits != expected:
            raise InvalidProofOfWork(f"bits {header.bits:#010x} are not the expected {expected:#010x}")
        target = compact_to_target(header.bits)
        if not 0 < target <= self.limit_target:
            raise InvalidProofOfWork(f"target of bits {header.bits:#010x} is zero or above the limit")
        # The header hash meets its target.
        if not self.skip_pow_check and not hash_meets_target(block_hash, target):
            raise InvalidProofOfWork(f"block hash {block_hash.hex()[:16]} does not meet its target")

    def validate_body(self, block: Block, parent: Entry, tree: BlockTree) -> None:
        # Proof of work has no votes and no seal: the nonce is the proof.
        if block.consensus or block.seal:
            raise InvalidBlock("a proof-of-work block carries no consensus body and no seal")

    def block_score(self, header: BlockHeader) -> int:
        return work_of_bits(header.bits)

    def initial_state(self, genesis: Genesis) -> None:
        return None

    def process_body(self, state: State, block: Block, parent: Entry, tree: BlockTree) -> None:
        return None  # no engine state: the transactions and the reward are everything

    def choose_head(self, tree: BlockTree, added: Entry | None) -> Entry:
        # Most cumulative work wins; on a tie the block seen first (the head) stays.
        if added is not None and added.score > tree.head.score:
            return added
        return tree.head

    def validators_json(self, tree: BlockTree) -> list[dict]:
        return []  # miners are anonymous: no registry

    def slashings_json(self, tree: BlockTree) -> dict:
        return {"included": [], "pending_evidence": []}

    def make_producer(self, key: object, stored_protection: bytes | None, byzantine: frozenset[str]) -> None:
        return None  # no validator duties: miners produce blocks

    def on_vote(self, tree: BlockTree, payload: bytes) -> None:
        return None  # there are no votes in proof of work: ignored, not a fault

    def on_evidence(self, tree: BlockTree, payload: bytes) -> None:
        return None  # nobody can be slashed in proof of work: ignored, not a fault

    def take_new_evidence(self, tree: BlockTree) -> list[bytes]:
        return []

    def final_height(self, tree: BlockTree) -> int:
        # Probabilistic finality made a rule: nothing reorganises deeper than the bound.
        return max(0, tree.head.height - tree.params.reorg_depth_max)

    def status(self, tree: BlockTree) -> dict:
        head = tree.head
        return {
            "engine": self.name,
            "bits": f"{head.header.bits:#010x}",
            "difficulty_work": work_of_bits(head.header.bits),
            "total_work": head.score,
            "target_spacing_ms": self.params.target_spacing_ms,
            "retarget_interval_blocks": self.params.retarget_interval_blocks,
        }


