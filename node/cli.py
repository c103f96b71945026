"""The `chainlab` command line."""

import argparse
import json
import sys

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


def cmd_sim(args: argparse.Namespace) -> int:
    if args.nodes > 256:
        print("chainlab sim: at most 256 nodes", file=sys.stderr)
        return 2
    config = SimConfig(
        consensus=args.consensus, nodes=args.nodes, seed=args.seed, duration_s=args.duration,
        faults=args.faults, tx_rate=args.tx_rate,
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
    sim.add_argument("--consensus", choices=["pow"], default="pow", help="consensus engine (default: pow)")
    sim.add_argument("--nodes", type=_positive_int, default=4, help="number of nodes (default: 4)")
    sim.add_argument("--seed", type=int, default=1, help="run seed; replays the run exactly (default: 1)")
    sim.add_argument("--duration", type=_duration, default=60.0, help="simulated seconds (default: 60)")
    sim.add_argument("--faults", type=_faults, default=(),
                     help=f"comma-separated faults drawn from the seed: {','.join(FAULT_TYPES)}")
    sim.add_argument("--tx-rate", type=float, default=2.0, help="transfers per simulated second (default: 2)")
    sim.add_argument("--json", action="store_true", help="print the summary as JSON")
    sim.set_defaults(func=cmd_sim)
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
