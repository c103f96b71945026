"""Building a genesis from presets (used by the CLI, the simulator and tests)."""

from consensus.crypto import KeyPair
from consensus.genesis import Genesis
from consensus.params import CHAIN_PRESETS
from consensus.pos.params import POS_PRESETS
from consensus.pow.params import POW_PRESETS

ENGINE_PRESETS = {"pow": POW_PRESETS, "pos": POS_PRESETS}


def genesis_params(consensus: str, preset: str, overrides: dict[str, int] | None = None) -> dict[str, int]:
    if consensus not in ENGINE_PRESETS:
        raise ValueError(f"unknown consensus {consensus!r}; choose one of {', '.join(sorted(ENGINE_PRESETS))}")
    if preset not in CHAIN_PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(sorted(CHAIN_PRESETS))}")
    params = dict(CHAIN_PRESETS[preset])
    params.update(ENGINE_PRESETS[consensus][preset])
    params.update(overrides or {})
    return params


def account_key(seed: str, index: int) -> KeyPair:
    """Prefunded account `index` of a network made from `seed`."""
    return KeyPair.derive(seed, "account", index)


def make_genesis(
    *,
    consensus: str = "pow",
    preset: str = "minimal",
    seed: str = "chainlab",
    accounts: int = 8,
    balance: int = 1_000_000_000,
    chain_id: str | None = None,
    timestamp_ms: int = 1_700_000_000_000,
    overrides: dict[str, int] | None = None,
    validators: int = 0,
    stake: int = 32_000_000,
) -> Genesis:
    """`validators` (proof of stake): that many genesis validators with keys
    validator_key(seed, i), each staking `stake`."""
    allocations = {account_key(seed, i).address: balance for i in range(accounts)}
    return Genesis.create(
        chain_id or f"chainlab-{consensus}-{seed}",
        consensus,
        timestamp_ms,
        genesis_params(consensus, preset, overrides),
        allocations,
        [(validator_key(seed, i).public_key, stake) for i in range(validators)],
    )


def validator_key(seed: str, index: int) -> KeyPair:
    """Genesis validator `index` of a network made from `seed`."""
    return KeyPair.derive(seed, "validator", index)
