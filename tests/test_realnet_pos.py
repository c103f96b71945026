"""A proof-of-stake testnet of real node processes from the CLI: four validators
finalize, and a transfer sent to one node is included and then finalized on all four.

`chainlab testnet up --consensus pos --preset minimal` (1 s slots, 4-slot epochs) on
free ports of 127.0.0.1; every wait polls a condition with a deadline.
"""

import hashlib
import json

import pytest

from realnet import Testnet, chainlab, rpc, wait_for

FINALITY_TIMEOUT_S = 90.0


@pytest.fixture(scope="module")
def posnet(tmp_path_factory):
    home = tmp_path_factory.mktemp("posnet") / "testnet"
    net = Testnet(home)
    try:
        chainlab("testnet", "up", "--home", str(home), "--consensus", "pos", "--preset", "minimal", "--nodes", "4",
                 "--p2p-port", "0", "--rpc-port", "0", "--detach", timeout_s=90)
        net.reload()
        yield net
    finally:
        net.cleanup()


def finalized_epoch(url: str) -> int:
    return rpc(url, "consensus_status")["finalized"]["epoch"]


def test_four_validators_finalize_the_same_checkpoints(posnet):
    assert posnet.consensus == "pos"
    wait_for(lambda: min(finalized_epoch(u) for u in posnet.urls), FINALITY_TIMEOUT_S,
             "every node to finalize epoch 2", until=lambda e: e >= 2)
    heads = [rpc(u, "chain_getHead") for u in posnet.urls]
    low = min(h["final_height"] for h in heads)
    assert low > 0
    assert len({rpc(u, "chain_getBlockHash", low) for u in posnet.urls}) == 1  # one finalized chain
    validators = rpc(posnet.urls[0], "consensus_validators")
    assert [v["status"] for v in validators] == ["active"] * 4 and not any(v["slashed"] for v in validators)
    proposed = sum(rpc(u, "consensus_status")["blocks_proposed"] for u in posnet.urls)
    assert proposed >= heads[0]["height"] - 1  # blocks come from the validators, no miner


def test_a_transfer_is_included_and_then_finalized_on_every_node(posnet):
    accounts = json.loads((posnet.home / "accounts.json").read_text())
    sender = accounts[2]
    recipient = hashlib.sha256(b"test_realnet_pos recipient").hexdigest()[:40]
    before = rpc(posnet.urls[0], "chain_getAccount", sender["address"])
    done = chainlab("tx", "transfer", "--home", str(posnet.home), "--node", "node1", "--key", sender["key_file"],
                    "--to", recipient, "--amount", "777", "--fee", "10", "--wait", "--timeout", "60", timeout_s=90)
    txid = next(w for w in done.stdout.split() if len(w) == 64 and all(c in "0123456789abcdef" for c in w))
    for url in posnet.urls:
        status = wait_for(lambda: rpc(url, "chain_getTransaction", txid), FINALITY_TIMEOUT_S,
                          f"{txid} finalized at {url}", until=lambda s: s["status"] == "finalized")
        assert status["height"] <= rpc(url, "chain_getHead")["final_height"]
        assert rpc(url, "chain_getAccount", recipient)["balance"] == 777
        assert rpc(url, "chain_getAccount", sender["address"])["balance"] == before["balance"] - 787


def test_an_account_stakes_from_the_cli_and_joins_the_registry(posnet):
    accounts = json.loads((posnet.home / "accounts.json").read_text())
    staker = accounts[3]
    chainlab("tx", "stake", "--home", str(posnet.home), "--node", "node2", "--key", staker["key_file"],
             "--amount", "5000000", "--wait", "--timeout", "60", timeout_s=90)
    for url in posnet.urls:
        validators = wait_for(lambda: rpc(url, "consensus_validators"), 30, f"the stake on {url}",
                              until=lambda vs: len(vs) == 5)
        assert validators[4]["address"] == staker["address"] and validators[4]["stake"] == 5_000_000
        assert validators[4]["status"] in ("pending", "active")
        assert rpc(url, "chain_getAccount", staker["address"])["balance"] == staker["balance"] - 5_000_000 - 10
    # A second stake by the same key is refused by the node, with the reason.
    again = chainlab("tx", "stake", "--home", str(posnet.home), "--node", "node2", "--key", staker["key_file"],
                     "--amount", "5000000", check=False)
    assert again.returncode == 1 and "one stake per key" in again.stderr
