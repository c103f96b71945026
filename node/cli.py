"""The `chainlab` command line."""

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path

# The simulator's names are small; heavier imports happen inside each command, so
# `chainlab --help` and `chainlab rpc` start fast.
from sim.scenario import FAULT_TYPES, SimConfig, run_simulation


def _faults(text: str) -> tuple[str, ...]:
    names = tuple(sorted({n.strip() for n in text.split(",") if n.strip()}))
    unknown = [n for n in names if n not in FAULT_TYPES]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown fault(s) {', '.join(unknown)}; choose from {', '.join(FAULT_TYPES)}")
    return names


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _duration(text: str) -> float:
    value = float(text)
    if not 1 <= value <= 86_400:
        raise argparse.ArgumentTypeError("must be between 1 and 86400 seconds")
    return value


def _byzantine(text: str) -> tuple[int, tuple[str, ...]]:
    from consensus.pos.producer import BYZANTINE_SWITCHES

    node, sep, switches = text.partition("=")
    names = tuple(sorted({s.strip() for s in switches.split(",") if s.strip()}))
    if not sep or not node.strip().isdigit() or not names:
        raise argparse.ArgumentTypeError(f"expected NODE=SWITCH[,SWITCH], e.g. 1=double-vote, not {text!r}")
    unknown = [n for n in names if n not in BYZANTINE_SWITCHES]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown byzantine switch(es) {', '.join(unknown)}; choose from "
                                         f"{', '.join(sorted(BYZANTINE_SWITCHES))}")
    return int(node), names


def cmd_sim(args: argparse.Namespace) -> int:
    if args.swarm:
        return cmd_sim_swarm(args)
    refused = [flag for flag, value in (("--seeds", args.seeds), ("--consensus both", args.consensus == "both"))
               if value]
    if refused:
        print(f"chainlab sim: {' and '.join(refused)} need(s) --swarm", file=sys.stderr)
        return 2
    nodes = 4 if args.nodes is None else args.nodes
    if nodes > 256:
        print("chainlab sim: at most 256 nodes", file=sys.stderr)
        return 2
    byzantine: dict[int, tuple[str, ...]] = {}
    for node, switches in args.byzantine or ():
        byzantine[node] = tuple(sorted(set(byzantine.get(node, ())) | set(switches)))
    from consensus.pos.producer import VALIDATOR_SWITCHES

    used = {s for switches in byzantine.values() for s in switches}
    if used & set(VALIDATOR_SWITCHES) and args.consensus != "pos":
        print(f"chainlab sim: {', '.join(sorted(used & set(VALIDATOR_SWITCHES)))}: validator misbehaviour, "
              "needs --consensus pos", file=sys.stderr)
        return 2
    if "withhold" in used and args.consensus != "pow":
        print("chainlab sim: withhold is a mining strategy (selfish mining): needs --consensus pow", file=sys.stderr)
        return 2
    if any(node >= nodes for node in byzantine):
        print(f"chainlab sim: --byzantine names node {max(byzantine)}, but nodes are 0..{nodes - 1}", file=sys.stderr)
        return 2
    config = SimConfig(
        consensus=args.consensus, nodes=nodes, seed=1 if args.seed is None else args.seed,
        duration_s=60.0 if args.duration is None else args.duration,
        faults=args.faults, tx_rate=args.tx_rate, byzantine=byzantine,
    )
    result = run_simulation(config)
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
    else:
        print_summary(result)
    if not result.ok:
        print(f"\nINVARIANT VIOLATED. Replay with: {config.replay_command()}", file=sys.stderr)
        return 1
    return 0


def cmd_sim_swarm(args: argparse.Namespace) -> int:
    from sim.swarm import SWARM_DURATION_S, format_run, format_summary, run_swarm

    if args.byzantine:
        print("chainlab sim: --swarm draws byzantine switches from each seed; --byzantine is for single runs",
              file=sys.stderr)
        return 2
    if args.nodes is not None and args.nodes > 256:
        print("chainlab sim: at most 256 nodes", file=sys.stderr)
        return 2
    first = 1 if args.seed is None else args.seed
    seeds = range(first, first + (args.seeds or 20))
    engines = ("pow", "pos") if args.consensus == "both" else (args.consensus,)
    # Progress goes to stderr under --json, so stdout stays one JSON document.
    progress = sys.stderr if args.json else sys.stdout
    report = run_swarm(seeds, engines, nodes=args.nodes,
                       duration_s=SWARM_DURATION_S if args.duration is None else args.duration,
                       faults=args.faults or FAULT_TYPES, tx_rate=args.tx_rate,
                       on_run=lambda run: print(format_run(run), file=progress, flush=True))
    print(format_summary(report), file=progress)
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    return 0 if report.ok else 1


def print_summary(result) -> None:
    j = result.to_json()
    print(f"seed {j['seed']}  consensus {j['consensus']}  nodes {len(j['nodes'])}")
    print(f"simulated {j['simulated_seconds']} s in {j['wall_seconds']} s wall ({j['speed']}x), {j['events']} events")
    print("faults injected: " + (", ".join(f"{k}={v}" for k, v in j["faults_injected"].items()) or "none"))
    for line in j["fault_log"]:
        print(f"  {line}")
    print("nodes:")
    for n in j["nodes"]:
        print(f"  node{n['node']}: height {n['height']} head {n['head'][:16]} mined {n['blocks_mined']} "
              f"reorgs {n['reorgs']} (deepest {n['deepest_reorg']}) peers {n['peers']}")
    print(f"heads agree: {'yes' if j['heads_agree'] else 'NO'}")
    print(f"reorgs: {j['reorgs']} (deepest {j['deepest_reorg']})")
    t = j["transactions"]
    print(f"transactions: sent {t['sent']}, acknowledged {t['acknowledged']}, included {t['included']}, "
          f"superseded by a reused nonce {t['superseded']}")
    print(f"digest: {j['digest']}")
    print("invariants:")
    for v in j["invariants"]:
        print(f"  [{'PASS' if v['ok'] else 'FAIL'}] {v['name']}: {v['detail']}")
    print(f"replay: {j['replay']}")


def cmd_genesis(args: argparse.Namespace) -> int:
    from node.homes import ACCOUNTS_FILE, STAKE_DEFAULT, create_network
    from node.settings import SettingsError

    out = Path(args.out)
    pos = args.consensus == "pos"
    if not pos and args.stake is not None:
        print("chainlab genesis: --stake is for --consensus pos (proof of work has no validators)", file=sys.stderr)
        return 2
    hosts = None
    if args.p2p_host_format:
        hosts = [args.p2p_host_format.format(i=i) for i in range(args.nodes)]
    try:
        genesis = create_network(
            out, consensus=args.consensus, nodes=args.nodes, accounts=args.accounts, seed=args.seed,
            preset=args.preset, balance=args.balance, p2p_hosts=hosts, p2p_port_base=args.p2p_port,
            rpc_port_base=args.rpc_port, same_ports=args.same_ports, mining=not args.no_mining,
            hashrate=args.hashrate, stake=args.stake if args.stake is not None else STAKE_DEFAULT,
        )
    except (SettingsError, OSError) as exc:
        print(f"chainlab genesis: {exc}", file=sys.stderr)
        return 2
    print(f"network {genesis.chain_id} ({genesis.consensus}, preset {args.preset}) in {out}")
    print(f"genesis hash {genesis.hash.hex()}")
    for i in range(args.nodes):
        validator = ""
        if pos:
            public_key, stake = genesis.validators[i]
            validator = f"  validator {i} {public_key.hex()} stake {stake}"
        print(f"  node{i}: {out / f'node{i}'}{validator}")
    accounts = json.loads((out / ACCOUNTS_FILE).read_text())
    print(f"prefunded accounts ({len(accounts)}, listed in {out / ACCOUNTS_FILE}):")
    for a in accounts[:10]:
        print(f"  {a['index']}: {a['address']}  balance {a['balance']}  key {a['key_file']}")
    if len(accounts) > 10:
        print(f"  ... and {len(accounts) - 10} more")
    return 0


def cmd_node(args: argparse.Namespace) -> int:
    from consensus.crypto import address_of
    from node.logs import configure, node_logger
    from node.runtime import NodeRuntime, StartupError
    from node.settings import (
        GENESIS_FILE,
        KEY_FILE,
        SettingsError,
        check_home,
        load_settings,
        read_genesis,
        read_key,
        read_validator_key,
    )
    from p2p.connection import node_id_of

    home = Path(args.home)
    flags = {name: getattr(args, name) for name in NODE_FLAGS}
    try:
        check_home(home)
        settings = load_settings(home, os.environ, flags)
        genesis = read_genesis(home / GENESIS_FILE)
        key = read_key(home / KEY_FILE)
        validator_key = read_validator_key(home)
    except SettingsError as exc:
        print(f"chainlab node: {exc}", file=sys.stderr)
        return 2
    configure(settings.log_level)
    log = node_logger(settings.name, node_id_of(key.public_key))
    log.info("node_starting", home=str(home.resolve()), chain_id=genesis.chain_id, genesis=genesis.hash.hex(),
             consensus=genesis.consensus, producer=address_of(key.public_key).hex(),
             validator=validator_key.public_key.hex() if validator_key else None)
    runtime = NodeRuntime(home, settings, genesis, key, log, validator_key=validator_key)
    try:
        asyncio.run(runtime.run())
    except StartupError as exc:
        log.error("node_failed_to_start", error=str(exc))
        print(f"chainlab node: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # a second Ctrl-C while stopping
        return 130
    return 0


# Node settings that are also flags (node.settings.Settings; same names as config.toml).
NODE_FLAGS = ("p2p_host", "p2p_port", "advertise", "bootstrap", "rpc_host", "rpc_port", "mining", "hashrate",
              "log_level", "name", "byzantine")


def _add_node_parser(sub) -> None:
    from node.settings import BYZANTINE_BEHAVIOURS

    node = sub.add_parser(
        "node",
        help="run one node from its home folder",
        description="Run one node in the foreground until SIGTERM or Ctrl-C. Settings come from HOME/config.toml, "
                    "then CHAINLAB_<KEY> environment variables, then these flags. Logs are JSON lines on stdout.",
    )
    node.add_argument("--home", required=True, help="the node's home folder (made by `chainlab genesis`)")
    node.add_argument("--name", help="name in logs and /health")
    node.add_argument("--p2p-host", help="address the P2P listener binds (default 127.0.0.1)")
    node.add_argument("--p2p-port", type=int, help="P2P port (0 picks a free one)")
    node.add_argument("--advertise", help="host:port other nodes dial to reach this one")
    node.add_argument("--bootstrap", help="comma-separated host:port peers to dial and keep")
    node.add_argument("--rpc-host", help="address the JSON-RPC server binds (default 127.0.0.1)")
    node.add_argument("--rpc-port", type=int, help="JSON-RPC port (0 picks a free one)")
    node.add_argument("--mining", choices=["true", "false"], help="mine continuously from the start")
    node.add_argument("--hashrate", type=int, help="hashes per second cap of the miner (0 = no cap)")
    node.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="log level")
    node.add_argument("--byzantine", metavar="BEHAVIOURS",
                      help="for tests and chaos runs: make this validator misbehave on purpose; off by default. "
                           f"Comma-separated: {', '.join(BYZANTINE_BEHAVIOURS)}")
    node.set_defaults(func=cmd_node)


def _add_genesis_parser(sub) -> None:
    g = sub.add_parser(
        "genesis",
        help="write a new network: genesis, prefunded accounts and one home folder per node",
        description="Write OUT/genesis.json, OUT/accounts.json with OUT/accounts/*.key, and OUT/node<i>/ homes "
                    "(config.toml, genesis.json, node.key; with --consensus pos also validator.key: node i is "
                    "genesis validator i). Keys derive from --seed: the same command gives the same network "
                    "anywhere, so never use these keys for anything of value.",
    )
    g.add_argument("--consensus", choices=["pow", "pos"], default="pow",
                   help="consensus engine: pow (proof of work) or pos (proof of stake: every node is a validator) "
                        "(default: pow)")
    g.add_argument("--nodes", type=_positive_int, default=4, help="number of nodes (default: 4)")
    g.add_argument("--accounts", type=int, default=8, help="prefunded accounts (default: 8)")
    g.add_argument("--balance", type=int, default=1_000_000_000, help="balance of each account (default: 1e9)")
    g.add_argument("--seed", default="chainlab", help="seed of every key (default: chainlab)")
    g.add_argument("--preset", choices=["testnet", "minimal"], default="testnet",
                   help="parameter preset (default: testnet: 2 s blocks for capped real miners, 2 s slots for "
                        "validators)")
    g.add_argument("--stake", type=_positive_int, default=None,
                   help="pos: stake of each genesis validator (default: 32000000)")
    g.add_argument("--out", required=True, help="folder to write (must not hold a network yet)")
    g.add_argument("--p2p-port", type=int, default=30303, help="P2P port of node0; node i uses +i (default 30303)")
    g.add_argument("--rpc-port", type=int, default=8545, help="RPC port of node0; node i uses +i (default 8545)")
    g.add_argument("--p2p-host-format", help="how peers reach node i, e.g. 'node{i}' under docker "
                                             "(default 127.0.0.1)")
    g.add_argument("--same-ports", action="store_true",
                   help="every node uses the base ports and binds 0.0.0.0 (one node per container)")
    g.add_argument("--hashrate", type=int, default=20_000, help="pow: miner cap per node, hashes/s (default 20000)")
    g.add_argument("--no-mining", action="store_true",
                   help="pow: nodes do not mine until miner_start/miner_generate (pos nodes never mine)")
    g.set_defaults(func=cmd_genesis)


def _chaos_faults(text: str) -> tuple[str, ...]:
    from sim.schedule import FAULT_TYPES as CHAOS_FAULT_TYPES

    names = tuple(sorted({n.strip() for n in text.split(",") if n.strip()}))
    unknown = [n for n in names if n not in CHAOS_FAULT_TYPES]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown fault(s) {', '.join(unknown)}; choose from "
                                         f"{', '.join(CHAOS_FAULT_TYPES)}")
    return names


def cmd_chaos(args: argparse.Namespace) -> int:
    from testnet.chaos import ChaosConfig, run

    config = ChaosConfig(target=args.target, consensus=args.consensus, nodes=args.nodes, seed=args.seed,
                         duration_s=args.duration, faults=args.faults, tx_rate=args.tx_rate,
                         out=Path(args.out) if args.out else None)
    return run(config, json_output=args.json)


def _add_chaos_parser(sub) -> None:
    chaos = sub.add_parser(
        "chaos",
        help="run a chaos experiment (faults, load, heal, invariant verdicts) on a local or docker testnet, "
             "or in the simulator",
        description="Draw a fault schedule from the seed, run it under a transaction load on a fresh local testnet "
                    "of real node processes (--target local), on a fresh Docker Compose testnet (--target docker) "
                    "or in the deterministic simulator (--target sim), "
                    "heal everything, wait a quiet period, and judge the run with the simulator's invariant "
                    "checks. Prints the faults injected per type, each verdict, the time to converge after the "
                    "heal and the transactions sent, included and lost; writes report.json and timeline.png to "
                    "--out. Exits 1 when a verdict fails or a requested fault type was never injected, 2 on "
                    "bad usage; prints the command that replays the run.",
    )
    chaos.add_argument("--target", choices=["local", "docker", "sim"], default="local",
                       help="local: real node processes on 127.0.0.1 (node/testnet.py); docker: containers of a "
                            "compose project of its own (needs a Docker engine; the image builds on first use); "
                            "sim: the same schedule in the deterministic simulator, replayed exactly by the same "
                            "command (default: local)")
    chaos.add_argument("--consensus", choices=["pow", "pos"], default="pow", help="consensus engine (default: pow)")
    chaos.add_argument("--nodes", type=_positive_int, default=4, help="number of nodes (default: 4)")
    chaos.add_argument("--duration", type=_duration, default=60.0,
                       help="seconds of the run: faults, then a quiet period of max(20 s, 35%%) before the final "
                            "checks, which take some seconds more (default: 60)")
    chaos.add_argument("--seed", type=int, default=1, help="seed of the fault schedule and the load (default: 1)")
    chaos.add_argument("--faults", type=_chaos_faults, default=None,
                       help="comma-separated fault types: kill, pause, partition, delay, skew (timed), equivocate "
                            "(pos), withhold (pow), spam (byzantine roles for the whole run) (default: "
                            "kill,pause,partition,delay,skew)")
    chaos.add_argument("--tx-rate", type=float, default=2.0, help="transfers per second of the load (default: 2)")
    chaos.add_argument("--out", metavar="DIR",
                       help="folder for report.json, timeline.png, chaos.log and the testnet (local) or the "
                            "compose files (docker) "
                            "(default: a new temporary folder)")
    chaos.add_argument("--json", action="store_true", help="print the report as JSON instead of text")
    chaos.set_defaults(func=cmd_chaos)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chainlab",
        description="A local blockchain testnet and consensus laboratory.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sim = sub.add_parser(
        "sim",
        help="run the deterministic simulator and print a summary with invariant verdicts",
        description="Run N nodes of the real node code on a virtual clock and a simulated network. "
                    "The same seed gives a byte-identical run (compare the digest). Exits 1 when an "
                    "invariant fails and prints the command that replays the run.",
    )
    sim.add_argument("--consensus", choices=["pow", "pos", "both"], default="pow",
                     help="consensus engine (default: pow); with --swarm, 'both' runs every seed on each")
    sim.add_argument("--nodes", type=_positive_int, default=None,
                     help="number of nodes (default: 4; with --swarm, drawn from each seed: 4 or 5)")
    sim.add_argument("--seed", type=int, default=None,
                     help="run seed; replays the run exactly (default: 1); with --swarm, the first seed")
    sim.add_argument("--duration", type=_duration, default=None,
                     help="simulated seconds (default: 60; with --swarm, 45 per run)")
    sim.add_argument("--faults", type=_faults, default=(),
                     help=f"comma-separated faults drawn from the seed: {','.join(FAULT_TYPES)}; with --swarm, "
                          "the faults each seed draws from (default: all)")
    sim.add_argument("--byzantine", type=_byzantine, action="append", metavar="NODE=SWITCHES",
                     help="make NODE misbehave on purpose, e.g. 1=double-vote (repeatable; switches "
                          "comma-separated: pos validators double-propose, double-vote, surround-vote; pow "
                          "withhold (selfish mining); spam (invalid blocks and transactions) on either)")
    sim.add_argument("--tx-rate", type=float, default=2.0, help="transfers per simulated second (default: 2)")
    sim.add_argument("--swarm", action="store_true",
                     help="run many short simulations, each with its faults, node count and byzantine "
                          "nodes drawn from its seed; prints one line per run, a summary, and the replay "
                          "command of every failure; exits 1 when any run fails")
    sim.add_argument("--seeds", type=_positive_int, default=None,
                     help="with --swarm: how many seeds to run, from --seed on (default: 20)")
    sim.add_argument("--json", action="store_true",
                     help="print the summary as JSON (with --swarm: every run and the totals; progress on stderr)")
    sim.set_defaults(func=cmd_sim)
    _add_genesis_parser(sub)
    _add_node_parser(sub)
    _add_chaos_parser(sub)
    from node.cli_tools import add_commands

    add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
