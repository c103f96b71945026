"""`chainlab testnet`, `chainlab rpc` and `chainlab tx`: the tools around running nodes.

`add_commands(sub)` adds the three command groups to the `chainlab` parser's
subparsers; each command sets `func(args) -> exit code`.

Exit codes: 0 success; 1 the command failed (a JSON-RPC error, a node that would not
start, a transaction not included in time); 2 bad usage or no node to talk to
(argparse errors, an unreachable node, a missing key file); 3 `testnet status` found a
node that is not running; 130 interrupted while waiting.
"""

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from consensus.crypto import ADDRESS_BYTES, KeyPair
from consensus.types import TX_STAKE, TX_TRANSFER, TX_UNSTAKE, Transaction
from node import testnet
from node.client import NodeUnreachable, RpcCallError, RpcClient, read_cookie, read_cookie_file
from node.core import NOT_FOUND
from node.settings import SettingsError, read_key

# consensus.params: fee_min is 1 in every preset; a little more leaves room to replace
# a stuck transaction (a replacement must pay a strictly higher fee).
FEE_DEFAULT = 10
AMOUNT_MAX = 2**64 - 1  # amounts and fees are u64 on the wire
RPC_TIMEOUT_S = 10.0
TX_POLL_S = 0.2
TX_WAIT_S_MAX = 86_400.0
CONFIRMATIONS_MAX = 10_000
METHOD_CHARS_MAX = 128


# --- argument types -------------------------------------------------------------------


def _int_in(low: int, high: int, what: str):
    def parse(text: str) -> int:
        try:
            value = int(text, 10)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} must be a whole number, not {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{what} must be {low}..{high}, not {value}")
        return value
    return parse


def parse_address(text: str) -> bytes:
    """A 20-byte address as 40 hex characters (an optional 0x prefix is accepted)."""
    hex_text = text[2:] if text.lower().startswith("0x") else text
    if len(hex_text) != 2 * ADDRESS_BYTES or not all(c in "0123456789abcdefABCDEF" for c in hex_text):
        raise argparse.ArgumentTypeError(
            f"an address is {2 * ADDRESS_BYTES} hex characters ({ADDRESS_BYTES} bytes), not {text[:80]!r}")
    return bytes.fromhex(hex_text)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, not {text!r}") from None
    if not 0 < value <= TX_WAIT_S_MAX:
        raise argparse.ArgumentTypeError(f"must be more than 0 and at most {TX_WAIT_S_MAX:g} seconds")
    return value


def parse_param(text: str) -> Any:
    """A command-line parameter: JSON when it parses as JSON, else the string itself."""
    try:
        return json.loads(text, parse_constant=_not_json)
    except (ValueError, RecursionError):
        return text


def _not_json(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _fail(message: str, code: int) -> int:
    print(f"chainlab: {message}", file=sys.stderr)
    return code


# --- testnet --------------------------------------------------------------------------


def _testnet_command(run):
    """Wrap a testnet command: errors a person can fix print one message and exit 1."""
    def func(args: argparse.Namespace) -> int:
        try:
            return run(args, testnet.testnet_home(args.home))
        except testnet.TestnetError as exc:
            return _fail(str(exc), 1)
        except OSError as exc:  # e.g. a --home where we may not write
            return _fail(f"cannot use {exc.filename or 'the testnet folder'}: {exc.strerror or exc}", 1)
    return func


def cmd_testnet_up(args: argparse.Namespace, home: Path) -> int:
    return testnet.up(home, nodes=args.nodes, consensus=args.consensus, seed=args.seed, accounts=args.accounts,
                      p2p_port_base=args.p2p_port, rpc_port_base=args.rpc_port, hashrate=args.hashrate,
                      detach=args.detach, reset=args.reset, preset=args.preset)


# --- target node ----------------------------------------------------------------------


class TargetError(Exception):
    """No node to talk to: no testnet, unknown node name, unreadable cookie."""


def resolve_target(url: str | None, node: str | None, home_flag: str | None, cookie: str | None) -> tuple[str, str | None]:
    """(RPC URL, bearer token or None) for --url or --node (default node0 of the testnet)."""
    token = None
    try:
        if cookie is not None:
            token = read_cookie_file(Path(cookie))
        if url is not None:
            return url, token
        home = testnet.testnet_home(home_flag)
        try:
            entry = testnet.load_testnet(home).node(node or "node0")
        except testnet.TestnetError as exc:
            raise TargetError(f"{exc} (or pass --url)") from None
        if token is None:
            token = read_cookie(Path(entry.home))
        return entry.rpc_url, token
    except SettingsError as exc:
        raise TargetError(str(exc)) from None


def _add_target_options(parser: argparse.ArgumentParser) -> None:
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--url", help="RPC URL of the node, e.g. http://127.0.0.1:8545 (default: node0 of the testnet)")
    target.add_argument("--node", metavar="NAME", help="a node of the testnet by name, e.g. node2 (default: node0)")
    parser.add_argument("--home", metavar="DIR",
                        help=f"testnet home for --node (default: ${testnet.TESTNET_HOME_ENV} or {testnet.TESTNET_HOME_DEFAULT})")
    parser.add_argument("--cookie", metavar="FILE",
                        help="file holding the RPC bearer token for privileged methods (default: the node's "
                             "rpc.cookie for --node; none for --url)")


# --- rpc ------------------------------------------------------------------------------


def cmd_rpc(args: argparse.Namespace) -> int:
    if not 0 < len(args.method) <= METHOD_CHARS_MAX:
        return _fail(f"a method name is 1..{METHOD_CHARS_MAX} characters", 2)
    try:
        url, token = resolve_target(args.url, args.node, args.home, args.cookie)
    except TargetError as exc:
        return _fail(str(exc), 2)
    params = [parse_param(p) for p in args.params]
    try:
        result = asyncio.run(_call(url, token, args.timeout, args.method, params))
    except ValueError as exc:  # a malformed --url
        return _fail(str(exc), 2)
    except RpcCallError as exc:
        print(f"error {exc.code}: {exc.message}", file=sys.stderr)
        return 1
    except NodeUnreachable as exc:
        return _fail(str(exc), 2)
    print(json.dumps(result, indent=2))
    return 0


async def _call(url: str, token: str | None, timeout_s: float, method: str, params: list) -> Any:
    async with RpcClient(url, token, timeout_s) as client:
        return await client.call(method, *params)


# --- tx -------------------------------------------------------------------------------


def build_transfer(key: KeyPair, chain_id: str, recipient: bytes, amount: int, fee: int, nonce: int,
                   kind: int = TX_TRANSFER) -> Transaction:
    """A signed transaction; the node only ever sees the signature, never the key. Stake and
    unstake (proof of stake) go to the zero address; the key becomes the validator's."""
    unsigned = Transaction(kind, chain_id, key.public_key, recipient, amount, fee, nonce, bytes(64))
    return unsigned._replace(signature=key.sign(unsigned.signing_bytes()))


def cmd_tx_stake(args: argparse.Namespace) -> int:
    args.to, args.kind = bytes(20), TX_STAKE
    return cmd_tx_transfer(args)


def cmd_tx_unstake(args: argparse.Namespace) -> int:
    args.to, args.kind, args.amount = bytes(20), TX_UNSTAKE, 0
    return cmd_tx_transfer(args)


def cmd_tx_transfer(args: argparse.Namespace) -> int:
    try:
        key = read_key(Path(args.key))
    except SettingsError as exc:
        return _fail(str(exc), 2)
    if getattr(args, "kind", TX_TRANSFER) == TX_TRANSFER and key.address == args.to:
        return _fail("--to is the sender's own address; a transfer to yourself is refused by the chain", 2)
    try:
        url, token = resolve_target(args.url, args.node, args.home, args.cookie)
    except TargetError as exc:
        return _fail(str(exc), 2)
    try:
        return asyncio.run(_transfer(url, token, key, args))
    except ValueError as exc:  # a malformed --url
        return _fail(str(exc), 2)
    except RpcCallError as exc:
        print(f"error {exc.code}: {exc.message}", file=sys.stderr)
        return 1
    except NodeUnreachable as exc:
        return _fail(str(exc), 2)


async def _transfer(url: str, token: str | None, key: KeyPair, args: argparse.Namespace) -> int:
    async with RpcClient(url, token, RPC_TIMEOUT_S) as client:
        info = await client.call("net_info")
        chain_id = info.get("chain_id") if isinstance(info, dict) else None
        if not isinstance(chain_id, str):
            return _fail(f"net_info of {url} has no chain_id", 1)
        nonce = args.nonce
        if nonce is None:
            account = await client.call("chain_getAccount", key.address.hex())
            if not isinstance(account, dict) or not all(isinstance(account.get(k), int) for k in ("nonce", "pending")):
                return _fail(f"chain_getAccount of {url} has no integer nonce and pending", 1)
            nonce = account["nonce"] + account["pending"]
        tx = build_transfer(key, chain_id, args.to, args.amount, args.fee, nonce, getattr(args, "kind", TX_TRANSFER))
        txid = await client.call("tx_send", tx.encode().hex())
        print(txid, flush=True)
        if txid != tx.txid.hex():
            return _fail(f"the node returned txid {txid}, but the signed transaction's id is {tx.txid.hex()}", 1)
        if not args.wait:
            return 0
        return await wait_included(client, txid, args.confirmations, args.timeout)


async def wait_included(client: RpcClient, txid: str, confirmations: int, timeout_s: float) -> int:
    """Poll chain_getTransaction until the transaction has `confirmations`; 0, or 1 at the timeout."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    last = "not seen"
    while True:
        try:
            found = await client.call("chain_getTransaction", txid)
        except RpcCallError as exc:
            if exc.code != NOT_FOUND:
                raise
            # Unknown right now: evicted, or in a block that a reorg just undid. Keep asking.
            last = "unknown to the node"
        else:
            last = found.get("status", "?") if isinstance(found, dict) else "?"
            if last in ("included", "finalized") and found.get("confirmations", 0) >= confirmations:
                print(f"included at height {found['height']} in block {found['block']} "
                      f"({found['confirmations']} confirmation(s), {last})")
                return 0
        if loop.time() >= deadline:
            return _fail(f"transaction {txid} did not reach {confirmations} confirmation(s) within {timeout_s:g} s "
                         f"(last status: {last})", 1)
        await asyncio.sleep(TX_POLL_S)


# --- the parser -----------------------------------------------------------------------


def _help_on_missing(parser: argparse.ArgumentParser):
    def func(args: argparse.Namespace) -> int:
        parser.print_help(sys.stderr)
        return 2
    return func


def add_commands(sub: "argparse._SubParsersAction") -> None:
    """Add `testnet`, `rpc` and `tx` to the subparsers of the `chainlab` parser."""
    _add_testnet(sub)
    _add_rpc(sub)
    _add_tx(sub)


def _add_testnet(sub: "argparse._SubParsersAction") -> None:
    parser = sub.add_parser(
        "testnet", help="run a local testnet of real node processes on 127.0.0.1",
        description="Create, start, inspect and stop a local testnet of real node processes. The testnet "
                    f"lives in a folder (--home, ${testnet.TESTNET_HOME_ENV}, or {testnet.TESTNET_HOME_DEFAULT}) "
                    "with one node home per node and nodes.json (names, RPC URLs, pids).",
    )
    parser.set_defaults(func=_help_on_missing(parser))
    commands = parser.add_subparsers(dest="testnet_command", metavar="COMMAND")
    home_help = f"testnet folder (default: ${testnet.TESTNET_HOME_ENV} or {testnet.TESTNET_HOME_DEFAULT})"

    up = commands.add_parser(
        "up", help="create the testnet (or resume an existing one) and start every node",
        description="Create the testnet when its folder holds none, else resume it with its chains as they "
                    "were; start one node process per node with its output in node<i>/node.log. Without "
                    "--detach, stay in the foreground showing each node's height; Ctrl-C stops every node.",
    )
    up.add_argument("--home", metavar="DIR", help=home_help)
    up.add_argument("--nodes", type=_int_in(1, 64, "--nodes"), default=4, help="number of nodes (default: 4)")
    up.add_argument("--consensus", choices=["pow", "pos"], default="pow",
                    help="consensus engine of a new testnet: pow (proof of work: every node mines) or pos (proof "
                         "of stake: every node is a genesis validator, 2 s slots) (default: pow)")
    up.add_argument("--seed", default="chainlab",
                    help="seed of the node and account keys; the same seed gives the same keys (default: chainlab)")
    up.add_argument("--accounts", type=_int_in(0, 10_000, "--accounts"), default=8,
                    help="prefunded accounts, keys in accounts/ (default: 8)")
    up.add_argument("--p2p-port", type=_int_in(0, 65_535, "--p2p-port"), default=30303,
                    help="P2P port of node0; node i uses base + i; 0 picks free ports (default: 30303)")
    up.add_argument("--rpc-port", type=_int_in(0, 65_535, "--rpc-port"), default=8545,
                    help="RPC port of node0; node i uses base + i; 0 picks free ports (default: 8545)")
    up.add_argument("--hashrate", type=_int_in(0, 100_000_000, "--hashrate"), default=20_000,
                    help="pow: hashes per second cap of each node's miner; 0 = no cap (default: 20000)")
    up.add_argument("--preset", choices=["testnet", "minimal"], default="testnet",
                    help="parameter preset of a new testnet (default: testnet; minimal: 1 s blocks or slots, short "
                         "epochs, for tests)")
    up.add_argument("--detach", action="store_true",
                    help="return once every node answers, leaving them running in the background")
    up.add_argument("--reset", action="store_true",
                    help="delete the testnet folder first and create a new network")
    up.set_defaults(func=_testnet_command(cmd_testnet_up))

    st = commands.add_parser("status", help="show each node's pid, state, height, peers and head",
                             description="Show each node. Exits 0 when every node is running, 3 otherwise.")
    st.add_argument("--home", metavar="DIR", help=home_help)
    st.set_defaults(func=_testnet_command(lambda args, home: testnet.status(home)))

    for name, help_text, description, run in (
        ("stop", "stop one node cleanly (SIGTERM, SIGKILL after 10 s)",
         "Stop one node: SIGTERM, then SIGKILL if it has not exited within 10 s.",
         lambda args, home: testnet.stop(home, args.node)),
        ("start", "start one stopped node again and wait until it answers",
         "Start one node that is not running and wait (30 s) until it answers GET /health.",
         lambda args, home: testnet.start(home, args.node)),
        ("kill", "kill one node with SIGKILL, without cleanup (crash testing)",
         "SIGKILL one node and its miner worker: the node cannot close its store or remove its cookie.",
         lambda args, home: testnet.kill(home, args.node)),
    ):
        p = commands.add_parser(name, help=help_text, description=description)
        p.add_argument("node", metavar="NODE", help="node name, e.g. node1 (see `chainlab testnet status`)")
        p.add_argument("--home", metavar="DIR", help=home_help)
        p.set_defaults(func=_testnet_command(run))

    dn = commands.add_parser("down", help="stop every node",
                             description="Stop every node (SIGTERM, SIGKILL after 10 s); --remove deletes the folder.")
    dn.add_argument("--home", metavar="DIR", help=home_help)
    dn.add_argument("--remove", action="store_true", help="delete the testnet folder after stopping the nodes")
    dn.set_defaults(func=_testnet_command(lambda args, home: testnet.down(home, args.remove)))

    co = commands.add_parser(
        "compose", help="write a docker compose file for a testnet of N containers",
        description="Write a Docker Compose file (to stdout, or --out FILE, replacing it) for a testnet of N "
                    "nodes in containers: a genesis step, then node0..node<N-1>, each with its own volume, RPC "
                    "published on 127.0.0.1 (node i on --rpc-port + i). The repository's docker-compose.yml is "
                    "`chainlab testnet compose --nodes 4`.",
    )
    co.add_argument("--nodes", type=_int_in(1, 64, "--nodes"), default=4, help="number of nodes (default: 4)")
    co.add_argument("--consensus", choices=["pow", "pos"], default="pos",
                    help="engine of a new network unless $CONSENSUS says otherwise at `up` (default: pos)")
    co.add_argument("--rpc-port", type=_int_in(1, 65_535, "--rpc-port"), default=8545,
                    help="host port of node0's RPC; node i uses base + i (default: 8545)")
    co.add_argument("--out", metavar="FILE", help="file to write (default: stdout)")
    co.set_defaults(func=cmd_testnet_compose)


def cmd_testnet_compose(args: argparse.Namespace) -> int:
    from node.compose import compose_file

    try:
        text = compose_file(args.nodes, args.consensus, args.rpc_port)
    except ValueError as exc:
        return _fail(str(exc), 2)
    if args.out is None:
        sys.stdout.write(text)
        return 0
    try:
        Path(args.out).write_text(text)
    except OSError as exc:
        return _fail(f"cannot write {args.out}: {exc.strerror or exc}", 1)
    return 0


def _add_rpc(sub: "argparse._SubParsersAction") -> None:
    parser = sub.add_parser(
        "rpc", help="call a JSON-RPC method of a node and print the JSON result",
        description="Call METHOD with PARAMS on a node and print the result as JSON. Each PARAM is taken "
                    "as JSON when it parses as JSON (12, true, null, [1,2], {\"a\":1}), else as a string; "
                    "quote a string that looks like a number: '\"123\"'. Exits 1 on a JSON-RPC error "
                    "(printed as `error CODE: message`), 2 when the node cannot be reached.",
    )
    _add_target_options(parser)
    parser.add_argument("--timeout", type=_seconds, default=RPC_TIMEOUT_S,
                        help=f"seconds to wait for the answer (default: {RPC_TIMEOUT_S:g})")
    parser.add_argument("method", metavar="METHOD", help="method name, e.g. chain_getHead")
    parser.add_argument("params", metavar="PARAMS", nargs="*", help="positional parameters (JSON or strings)")
    parser.set_defaults(func=cmd_rpc)


def _add_tx(sub: "argparse._SubParsersAction") -> None:
    parser = sub.add_parser("tx", help="build, sign and submit transactions",
                            description="Build and sign transactions here and submit them to a node with tx_send.")
    parser.set_defaults(func=_help_on_missing(parser))
    kinds = parser.add_subparsers(dest="tx_command", metavar="KIND")
    transfer = kinds.add_parser(
        "transfer", help="send coins from the key's account to an address",
        description="Sign a transfer with --key on this machine and submit it. The nonce is the account's "
                    "nonce plus its pending transactions unless --nonce is given. Prints the transaction id; "
                    "with --wait, waits until it is included with --confirmations blocks.",
    )
    transfer.add_argument("--key", required=True, metavar="FILE",
                          help="sender's key file: 64 hex characters (e.g. accounts/account-0.key of the testnet)")
    transfer.add_argument("--to", required=True, type=parse_address, metavar="ADDRESS",
                          help="recipient address, 40 hex characters")
    transfer.add_argument("--amount", required=True, type=_int_in(1, AMOUNT_MAX, "--amount"), metavar="N",
                          help="coins to send, a positive whole number")
    _add_submit_options(transfer)
    transfer.set_defaults(func=cmd_tx_transfer)
    for name, what, func in (
        ("stake", "lock --amount from the key's account as a new validator's stake (proof of stake); it votes "
                  "and proposes after the activation delay", cmd_tx_stake),
        ("unstake", "start unbonding the key's whole stake (proof of stake); it returns to the account when the "
                    "unbonding period ends", cmd_tx_unstake),
    ):
        p = kinds.add_parser(name, help=what.split(";")[0], description=what[0].upper() + what[1:] + ".")
        p.add_argument("--key", required=True, metavar="FILE",
                       help="the account's key file, which becomes (or is) the validator's key")
        if name == "stake":
            p.add_argument("--amount", required=True, type=_int_in(1, AMOUNT_MAX, "--amount"), metavar="N",
                           help="stake to lock, at least the chain's stake_min")
        _add_submit_options(p)
        p.set_defaults(func=func)


def _add_submit_options(parser: argparse.ArgumentParser) -> None:
    """Fee, nonce, target node and waiting: the same for every transaction kind."""
    parser.add_argument("--fee", type=_int_in(1, AMOUNT_MAX, "--fee"), default=FEE_DEFAULT, metavar="F",
                        help=f"fee for the block producer, at least the chain's fee_min (1 on the testnet preset) "
                             f"(default: {FEE_DEFAULT})")
    parser.add_argument("--nonce", type=_int_in(0, AMOUNT_MAX, "--nonce"), metavar="N",
                        help="sender nonce to use (default: account nonce + pending transactions)")
    _add_target_options(parser)
    parser.add_argument("--wait", action="store_true", help="wait until the transaction is included")
    parser.add_argument("--timeout", type=_seconds, default=60.0, metavar="S",
                        help="with --wait, give up after S seconds and exit 1 (default: 60)")
    parser.add_argument("--confirmations", type=_int_in(1, CONFIRMATIONS_MAX, "--confirmations"), default=1,
                        metavar="C", help="with --wait, blocks on top of and including its block (default: 1)")
