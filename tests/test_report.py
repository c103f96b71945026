"""Chaos run reports (testnet/report.py): the JSON file holds exactly the report it was
given, the picture is a real PNG with something drawn in it, and the text summary names
every verdict, with a failing one marked FAIL, and the numbers a reader looks for."""

import json
import struct

from testnet.report import render_png, render_text, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def sample_report(ok: bool = False) -> dict:
    return {
        "target": "local", "consensus": "pos", "nodes": 3, "seed": 7, "duration_s": 60.0,
        "faults_requested": ["kill", "partition", "skew"],
        "faults_injected": {"kill": 2, "partition": 1},
        "verdicts": [
            {"name": "no conflicting finalized blocks", "ok": True, "detail": "3 nodes agree"},
            {"name": "all heads agree after the quiet period", "ok": ok, "detail": "node2 stuck at height 9"},
        ],
        "convergence_s": 4.5,
        "transactions": {"sent": 40, "included": 37, "lost": 3},
        "timeline": {
            "heights": {f"node{i}": [[float(t), t // 2 - (i if 10 <= t < 20 else 0)] for t in range(0, 61, 2)]
                        for i in range(3)},
            "faults": [{"kind": "kill", "start_s": 8.0, "end_s": 18.0, "nodes": [2]},
                       {"kind": "partition", "start_s": 15.0, "end_s": 30.5, "nodes": [0, 1, 2]},
                       {"kind": "kill", "start_s": 32.0, "end_s": 36.0, "nodes": [1]}],
        },
        "replay": "chainlab chaos --target local --consensus pos --nodes 3 --seed 7 --duration 60",
        "ok": ok,
    }


def test_the_json_written_equals_the_report(tmp_path):
    report = sample_report()
    json_path = tmp_path / "out" / "report.json"
    write_report(report, json_path, None)
    assert json.loads(json_path.read_text()) == report
    assert not (tmp_path / "out" / "report.png").exists()
    assert [p.name for p in json_path.parent.iterdir()] == ["report.json"]  # no temporary file left


def test_the_picture_is_a_valid_png_of_a_sensible_size(tmp_path):
    png_path = tmp_path / "report.png"
    write_report(sample_report(), tmp_path / "report.json", png_path)
    data = png_path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    lanes = len({f["kind"] for f in sample_report()["timeline"]["faults"]})
    assert (width, height) == (1000, int(100 * (5 + 0.35 * lanes)))  # a lane per fault kind under the heights
    assert len(data) > 20_000, "lines, bands and legends, not an empty canvas"
    assert data.endswith(b"IEND\xaeB`\x82")


def test_the_picture_copes_with_an_empty_timeline_and_an_unknown_fault_kind():
    report = sample_report()
    report["timeline"] = {"heights": {}, "faults": [{"kind": "meteor", "start_s": 1.0, "end_s": None, "nodes": []}]}
    assert render_png(report)[:8] == PNG_MAGIC


def test_the_text_lists_faults_verdicts_convergence_transactions_and_the_replay():
    text = render_text(sample_report())
    lines = text.splitlines()
    assert "FAILED" in lines[0]
    assert "faults injected: kill=2, partition=1, skew=0 (never injected)" in lines
    assert "  [PASS] no conflicting finalized blocks: 3 nodes agree" in lines
    assert "  [FAIL] all heads agree after the quiet period: node2 stuck at height 9" in lines
    assert "convergence: 4.5 s (faults healed at 36 s)" in lines
    assert "transactions: sent 40, included 37, lost 3" in lines
    assert lines[-1] == "replay: chainlab chaos --target local --consensus pos --nodes 3 --seed 7 --duration 60"


def test_a_passing_run_has_no_fail_and_a_stuck_one_says_it_did_not_converge():
    passing = render_text(sample_report(ok=True))
    assert "FAIL" not in passing and "[PASS] all heads agree" in passing
    stuck = sample_report()
    stuck["convergence_s"] = None
    assert "convergence: the nodes did not converge" in render_text(stuck)
