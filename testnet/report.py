"""The report of a chaos run: a JSON file, a picture, and a text summary.

Every chaos runner (targets sim, local and docker) produces the same report dict:

    {"target", "consensus", "nodes", "seed", "duration_s", "faults_requested": [...],
     "faults_injected": {kind: count}, "verdicts": [{"name", "ok", "detail"}],
     "convergence_s": float | None, "transactions": {"sent", "included", "lost"},
     "timeline": {"heights": {"node0": [[t_s, height], ...], ...},
                  "faults": [{"kind", "start_s", "end_s", "nodes": [...]}]},
     "replay": "chainlab chaos ...", "ok": bool}

`write_report` stores it as JSON (exactly what it was given) and, when asked, draws each
node's height over time with the faults as translucent bands, so a stall or a fork is
visible next to the fault that caused it. matplotlib is imported only to draw.
"""

import json
import os
from pathlib import Path
from typing import Any

# One colour per fault kind, the same in every picture, so reports compare at a glance.
FAULT_COLOURS = {
    "kill": "#d62728", "pause": "#ff7f0e", "partition": "#9467bd", "delay": "#1f77b4", "skew": "#2ca02c",
    "equivocate": "#8c564b", "withhold": "#e377c2", "spam": "#7f7f7f",
}
OTHER_COLOUR = "#bcbd22"  # a kind this table does not know yet still gets a band
BAND_ALPHA = 0.12  # translucent: overlapping faults and the height lines stay readable
# Byzantine roles last the whole run: shading the heights for them would hide the timed faults.
BACKGROUND_FREE = ("equivocate", "withhold", "spam")


def write_report(report: dict[str, Any], json_path: Path, png_path: Path | None) -> None:
    """Write the report as JSON, and the picture when `png_path` is given. Each file is
    written beside its target and renamed over it, so a reader never sees half a file."""
    _write_atomically(Path(json_path), (json.dumps(report, indent=2) + "\n").encode())
    if png_path is not None:
        _write_atomically(Path(png_path), render_png(report))


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def get_heal_s(report: dict[str, Any]) -> float | None:
    """When the last fault ended (a runner may also say so itself with "heal_at_s")."""
    if report.get("heal_at_s") is not None:
        return float(report["heal_at_s"])
    ends = [f["end_s"] for f in report.get("timeline", {}).get("faults", []) if f.get("end_s") is not None]
    return max(ends) if ends else None


def render_png(report: dict[str, Any]) -> bytes:
    """Two panels on one time axis: each node's height (one line per node, the heal
    marked), and below it the faults, one lane per kind, each fault a bar labelled with
    the nodes it hit, so a stall or a fork lines up with the fault that caused it."""
    import io

    # The object API with the Agg canvas: no pyplot global state, no display needed.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    timeline = report.get("timeline", {})
    faults = timeline.get("faults", [])
    duration = report.get("duration_s") or None
    kinds = [k for k in FAULT_COLOURS if any(f["kind"] == k for f in faults)]
    kinds += sorted({f["kind"] for f in faults} - set(kinds))
    lanes = max(1, len(kinds))
    fig = Figure(figsize=(10, 5 + 0.35 * lanes), dpi=100)
    FigureCanvasAgg(fig)
    ax, lane_ax = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [4, 0.6 + 0.45 * lanes]})
    heal = get_heal_s(report)
    for fault in faults:
        # Faults in force are shaded faintly behind the heights too.
        end = fault.get("end_s")
        end = duration if end is None else end  # never healed: to the end
        if fault["kind"] not in BACKGROUND_FREE:
            ax.axvspan(fault["start_s"], end, color=FAULT_COLOURS.get(fault["kind"], OTHER_COLOUR), alpha=BAND_ALPHA,
                       lw=0)
    for node, points in sorted(timeline.get("heights", {}).items(), key=lambda item: _node_order(item[0])):
        if points:
            ts, heights = zip(*points)
            ax.step(ts, heights, where="post", label=node, lw=1.4)
    if heal is not None:
        ax.axvline(heal, color="black", ls="--", lw=1, label=f"healed at {heal:g} s")
        lane_ax.axvline(heal, color="black", ls="--", lw=1)
    ax.set_ylabel("head height")
    ax.grid(True, alpha=0.3)
    verdict = "ok" if report.get("ok") else "FAILED"
    convergence = report.get("convergence_s")
    converged = f", converged in {convergence:g} s" if convergence is not None else ", did not converge"
    ax.set_title(f"{report.get('target', '?')} {report.get('consensus', '?')}, {report.get('nodes', '?')} nodes, "
                 f"seed {report.get('seed', '?')}: {verdict}{converged}")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper left", fontsize="small")
    for lane, kind in enumerate(kinds):
        colour = FAULT_COLOURS.get(kind, OTHER_COLOUR)
        for fault in (f for f in faults if f["kind"] == kind):
            end = fault.get("end_s")
            end = duration if end is None else end
            lane_ax.broken_barh([(fault["start_s"], max(0.01, (end or fault["start_s"]) - fault["start_s"]))],
                                (lane - 0.4, 0.8), color=colour, alpha=0.75)
            nodes = fault.get("nodes") or []
            if nodes:
                lane_ax.text(fault["start_s"] + 0.2, lane, ",".join(str(n) for n in nodes), va="center",
                             fontsize="x-small")
    lane_ax.set_yticks(range(len(kinds)), kinds if kinds else [])
    lane_ax.set_ylim(-0.6, lanes - 0.4)
    lane_ax.invert_yaxis()
    lane_ax.set_ylabel("faults")
    lane_ax.grid(True, axis="x", alpha=0.3)
    lane_ax.set_xlabel("seconds since the run's start (bars: fault in force; numbers: the nodes it hit)")
    lane_ax.set_xlim(0, duration)
    fig.tight_layout()
    out = io.BytesIO()
    fig.savefig(out, format="png")
    return out.getvalue()


def _node_order(name: str) -> tuple[int, str]:
    """node2 before node10."""
    digits = "".join(c for c in name if c.isdigit())
    return (int(digits) if digits else -1, name)


def render_text(report: dict[str, Any]) -> str:
    lines = [f"chaos run: target {report.get('target', '?')}, consensus {report.get('consensus', '?')}, "
             f"{report.get('nodes', '?')} nodes, seed {report.get('seed', '?')}, "
             f"{report.get('duration_s', '?')} s: {'ok' if report.get('ok') else 'FAILED'}"]
    injected = report.get("faults_injected", {})
    requested = report.get("faults_requested", [])
    # A requested fault that was never injected is listed too: a run that broke nothing proves little.
    names = list(requested) + sorted(k for k in injected if k not in requested)
    lines.append("faults injected: " + (", ".join(
        f"{k}={injected.get(k, 0)}" + (" (never injected)" if not injected.get(k) else "") for k in names) or "none"))
    lines.append("verdicts:")
    for v in report.get("verdicts", []):
        lines.append(f"  [{'PASS' if v.get('ok') else 'FAIL'}] {v.get('name', '?')}: {v.get('detail', '')}")
    convergence = report.get("convergence_s")
    heal = get_heal_s(report)
    healed = f" (faults healed at {heal:g} s)" if heal is not None else ""
    lines.append((f"convergence: {convergence:g} s" if convergence is not None else
                  "convergence: the nodes did not converge") + healed)
    t = report.get("transactions", {})
    lines.append(f"transactions: sent {t.get('sent', 0)}, included {t.get('included', 0)}, lost {t.get('lost', 0)}")
    lines.append(f"replay: {report.get('replay', '?')}")
    return "\n".join(lines)
