"""The evidence `drpo mismatch` recommends a delta from, computed from the committed delta sweep.

    python -m drpo.lab.evidence      # docs/results/delta/results.json -> src/drpo/mismatch/evidence.json

The sweep (results.json and the runs archive beside it) stays in the repository. The recommendation
(drpo.mismatch.recommend, core) must work from an installed wheel, so it reads a summary of the sweep per
condition instead, shipped as package data: this module computes that summary with the sweep's own statistics
(late accuracy, drpo.lab.outcomes; paired differences and Holm's correction, drpo.lab.stats) and writes it.
tests/test_mismatch.py checks the shipped file against the committed sweep: after the sweep is re-run, run
this command again.
"""

from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import asdict
from pathlib import Path

import yaml

from drpo.lab.archive import RunArchive
from drpo.lab.methods import parse_method
from drpo.lab.outcomes import PRIMARY
from drpo.lab.runs import run_dir
from drpo.lab.stats import holm, paired_difference
from drpo.lab.verdict import OUTCOME, per_seed_values
from drpo.mismatch.recommend import EVIDENCE_FILE, SWEEP_LOSS, Evidence

ROOT = Path(__file__).resolve().parents[3]  # the checkout this module sits in (the lab runs from a clone)
RESULTS = ROOT / "docs" / "results" / "delta" / "results.json"  # the committed delta sweep
OUT = Path(__file__).resolve().parents[1] / "mismatch" / EVIDENCE_FILE  # drpo.mismatch's package data
COMMAND = "python -m drpo.lab.evidence"


def evidence(results: dict, sweep_dir: Path | None = None) -> list[Evidence]:
    """The conditions of a delta sweep's results.json (as `drpo report` writes it), DRPO's points only."""
    points = next((s["points"] for s in results["sweeps"] if s["loss"] == SWEEP_LOSS), None)
    if not points:
        raise ValueError(f"the results have no delta sweep of '{SWEEP_LOSS}'")
    out = []
    for name, condition in results["conditions"].items():
        methods = {p["value"]: condition["methods"][p["label"]] for p in points if p["label"] in condition["methods"]}
        outcome = {delta: per_seed_values(m, PRIMARY) for delta, m in methods.items()}
        best = max(methods, key=lambda d: methods[d][PRIMARY]["mean"])
        to_best = {d: paired_difference(outcome[d], outcome[best], results["level"]) for d in sorted(methods) if d != best}
        adjusted = holm({d: diff["p"] for d, diff in to_best.items()})
        worse = tuple(d for d, diff in to_best.items() if diff["verdict"] == "worse")
        worse_corrected = tuple(d for d in worse if adjusted[d] < 1 - results["level"])
        p99s = [_mean([run["mismatch"]["p99"] for run in m["per_seed"].values()]) for m in methods.values()]
        out.append(Evidence(
            condition=name, about=condition["about"].split(":")[0], p99=_mean(p99s),
            p99_range=(min(p99s), max(p99s)), best=best,
            supported=tuple(d for d in sorted(methods) if d not in worse), worse=worse, worse_corrected=worse_corrected,
            compared=len(to_best),
            seeds=min(m["seeds"] for m in methods.values()),
            runs=_describe_runs(results, sweep_dir, name, points[0]["label"]),
            outcome=OUTCOME))
    return out


def build_evidence(results_path: str | Path = RESULTS) -> dict:
    """evidence.json's content for the sweep whose results.json is ``results_path`` (its runs archive beside it):
    the file the sweep came from, the command that wrote it, and one record per condition (Evidence's fields)."""
    path = Path(results_path).resolve()
    try:
        source = path.relative_to(ROOT).as_posix()
    except ValueError:
        source = str(path)
    document = {"source": source, "command": COMMAND, "loss": SWEEP_LOSS,
                "conditions": [asdict(e) for e in evidence(json.loads(path.read_text()), path.parent)]}
    return json.loads(json.dumps(document))  # as it reads back: tuples as lists


def write_evidence(results_path: str | Path = RESULTS, out: str | Path = OUT) -> Path:
    out = Path(out)
    out.write_text(json.dumps(build_evidence(results_path), indent=1) + "\n", encoding="utf-8")
    return out


def _mean(values: list[float | None]) -> float:
    return statistics.fmean(v for v in values if v is not None)


def _describe_runs(results: dict, sweep_dir: Path | None, condition: str, label: str) -> str:
    """'model small, task arith, 100 steps per run' from one run's config.yaml (on disk or in the sweep's archive)."""
    steps = next((o.split("=", 1)[1] for o in results.get("overrides", []) if o.startswith("steps=")), "?")
    files = {}
    if sweep_dir is not None and results.get("seeds"):
        path = run_dir(sweep_dir, condition, parse_method(label).slug, results["seeds"][0])
        files = RunArchive(sweep_dir).files(path)
    if "config.yaml" not in files:
        return f"{steps} steps per run"
    config = yaml.safe_load(files["config.yaml"])
    return f"model {config['model']['name']}, task {config['task']['name']}, {steps} steps per run"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", default=str(RESULTS), help="the delta sweep's results.json")
    parser.add_argument("--out", default=str(OUT), help="the evidence file to write")
    args = parser.parse_args(argv)
    print(f"wrote {write_evidence(args.results, args.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
