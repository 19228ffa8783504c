"""The `drpo` command: train, compare, and look at the loss family.

    drpo train [key=value ...]      RL on the embedded default (or a YAML config plus overrides)
    drpo losses                     the registry: names, hyper-parameters, what each does
    drpo weights --out FILE.png     gradient-weight curves of PPO, SPO, DPPO and DRPO
    drpo compare [--methods ...] [--conditions ...] [--seeds N] [key=value ...]   the off-policy stress test
    drpo report SWEEP_DIR           rebuild a sweep's report from its run directories
    drpo mismatch FILE... [--out DIR]            how off-policy is an engine: log-prob files or run directories
    drpo mismatch model=NAME [key=value ...] [--precisions ...]   mu per rollout precision vs the fp32 trainer

The command layer: the one module that imports both the core (drpo.config, drpo.trainer, drpo.losses,
drpo.mismatch, ...) and the lab (drpo.lab: sweeps, reports, verdicts, figures, the mismatch report). Every other
module outside drpo/lab/ imports the core only (tests/test_imports.py checks it). Each command imports what it
runs inside its function, so that `drpo --help` and a config error import no torch.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table


def cmd_train(args) -> int:
    from drpo.config import load_config

    overrides = list(args.overrides)
    config = load_config(args.config, overrides)  # a config error stops here, before torch is imported
    if config.resume:
        # continue the run as it was configured, in its own directory unless out= names another; overrides given
        # now still apply (e.g. a larger steps=)
        config = load_config(f"{config.resume}/config.yaml", [f"out={config.resume}", *overrides])
    from drpo.tasks.custom import RewardError
    from drpo.trainer import NonFiniteError, Trainer

    console = Console(stderr=True)
    _warn_if_cannot_bind(console, config.loss.build())
    console.print(f"[bold]drpo train[/]: loss {config.loss.build()!r}, model {config.model.name}"
                  f"{' (MoE)' if config.model.moe else ''}, task {config.task.name}, rollout {config.rollout.precision}"
                  f" lag {config.rollout.lag}, {config.updates_per_batch} update(s)/batch -> {config.out}")
    try:  # the warm-up's accuracy probe calls the task's reward too
        summary = Trainer(config, console=console).train(console=console)
    except (NonFiniteError, RewardError) as error:
        console.print(f"[red]stopped[/]: {error}", highlight=False)
        return 3
    start, final, best = (_accuracy(summary[f"eval/accuracy_{k}"]) for k in ("start", "final", "best"))
    console.print(f"eval accuracy {start} -> {final} (best {best}) in {summary['steps']} steps, RL "
                  f"{summary['wall_time_s']:.0f} s; summary: {config.out}/summary.json", highlight=False)
    return 130 if summary["interrupted"] else 0


def _accuracy(value) -> str:
    """An accuracy of summary.json for a line of text: it may be missing (no evaluation ran)."""
    return f"{value:.3f}" if isinstance(value, (int, float)) else "n/a"


def cmd_losses(args) -> int:
    from drpo.losses import ALIASES, LOSSES, PRESETS, get_loss, hyper_summary

    table = Table(title="drpo.losses registry", show_lines=False)
    table.add_column("name", style="bold cyan")
    table.add_column("hyper-parameters (defaults)")
    table.add_column("what it does")
    aliases = {target: alias for alias, target in ALIASES.items()}
    for name, spec in LOSSES.items():
        label = f"{name} ({aliases[name]})" if name in aliases else name
        table.add_row(label, hyper_summary(spec), spec.summary)
    for name, (base, hyper) in PRESETS.items():
        table.add_row(f"{name} [preset]", ", ".join(f"{k}={v!r}" for k, v in hyper.items()), f"preset of {base}")
    console = Console()
    console.print(table)
    for name in [*LOSSES, *PRESETS]:  # at its defaults (a preset: its setting), as `loss=NAME` builds it
        _warn_if_cannot_bind(console, get_loss(name), name)
    return 0


def _warn_if_cannot_bind(console: Console, loss, label: str | None = None) -> None:
    from drpo.losses import cannot_bind

    if (message := cannot_bind(loss)) is not None:
        console.print(f"[yellow]warning[/]{f' ({label})' if label else ''}: {message}", highlight=False)


def cmd_weights(args) -> int:
    from drpo.plots import plot_weight_curves

    path = plot_weight_curves(args.out, losses=args.losses)
    print(f"wrote {path}")
    return 0


def cmd_compare(args) -> int:
    from drpo.lab.compare import describe_grid, run_sweep, split_cli_lists

    if args.list:
        print(describe_grid())
        return 0
    methods, conditions, overrides = split_cli_lists(args.methods, args.conditions, args.overrides)
    return run_sweep(args.out, methods, args.seeds, conditions, overrides, args.workers, args.target,
                     threads=args.threads).exit_code


def cmd_report(args) -> int:
    from drpo.lab.report import write_report

    print(f"wrote {write_report(args.sweep_dir, args.target, args.baseline)}")
    return 0


def cmd_mismatch(args) -> int:
    from drpo.lab.mismatch_report import rich_length_table, rich_table, write_report
    from drpo.mismatch.stats import analyse

    overrides = [item for item in args.inputs if "=" in item]
    if overrides and len(overrides) < len(args.inputs):
        raise ValueError("give log-prob files (or run directories), or key=value overrides of a model "
                         "(model mode), not both")
    command = ["drpo", "mismatch", *args.inputs, *(["--delta", f"{args.delta:g}"] if args.delta is not None else [])]
    if overrides:
        from drpo.config import load_config
        from drpo.mismatch import model as mismatch_model

        rollouts = mismatch_model.parse_rollouts(args.rollouts)  # an unknown rollout stops before any work
        config = load_config(None, overrides)
        sources = mismatch_model.measure_rollouts(config, rollouts, args.prompts, args.samples,
                                                    console=Console(stderr=True))
        analyses = [analyse(source, args.delta) for source in sources]
        for analysis, rollout in zip(analyses, rollouts, strict=True):
            analysis.extra["rounds"] = rollout.rounds
        command += ["--rollouts", *(r.label for r in rollouts), "--prompts", str(args.prompts), "--samples",
                    str(args.samples)]
    else:
        from drpo.mismatch.format import distinct_labels, read_log_probs

        sources = [read_log_probs(path) for path in args.inputs]
        for source, label in zip(sources, distinct_labels([source.path for source in sources]), strict=True):
            source.label = label
        analyses = [analyse(source, args.delta) for source in sources]
    console = Console(width=None if sys.stdout.isatty() else 160)  # a log file gets the whole table
    console.print(rich_table(analyses))
    for analysis in analyses:
        if "rounds" in analysis.extra:
            console.print(f"  {analysis.label} rounds {analysis.extra['rounds']}", highlight=False)
    console.print(rich_length_table(analyses))
    advice = _print_advice(console, analyses, sources)
    if args.out:
        print(f"wrote {write_report(analyses, args.out, ' '.join([*command, '--out', args.out]), advice)}")
    return 0


def _print_advice(console, analyses, sources):
    """The delta the committed sweep supports for each source's mismatch (drpo.mismatch.recommend, from the
    evidence.json it ships with); returns the advice, or the reason there is none."""
    from drpo.lab.mismatch_report import advice_rows
    from drpo.mismatch.recommend import advise

    try:
        advice = advise(analyses, sources)
    except (FileNotFoundError, ValueError) as error:
        console.print(f"no delta recommendation: {error}")
        return str(error)
    console.print("\n[bold]Which delta for this mismatch?[/bold]")
    for item in advice:
        console.print(f"[bold cyan]{item.label}[/bold cyan]: " + " ".join(item.recommendation.lines()))
    header, rows = advice_rows(advice)
    table = Table(title="what each trust region does with these tokens at the recommended delta (pi against mu; "
                  "pi_old against mu for a source without pi)")
    for i, name in enumerate(header):
        table.add_column(name, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*row)
    console.print(table)
    return advice


def module_doc(name: str) -> str | None:
    """The docstring of module ``name``, read from its source without running it: `drpo compare --help` shows
    drpo.lab.compare's, and importing that module imports torch, scipy and matplotlib."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return None
    return ast.get_docstring(ast.parse(Path(spec.origin).read_text(encoding="utf-8")), clean=False)


def build_parser() -> argparse.ArgumentParser:
    """The `drpo` argument parser; building it (and so `drpo --help`, or a config error) imports no torch."""
    parser = argparse.ArgumentParser(prog="drpo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    from drpo.config import help_text

    train = sub.add_parser("train", help="RL on a verifiable task (no arguments: the embedded default)",
                           description="Train with RL. Keys (key=value overrides, dotted for sections):\n\n"
                           + help_text(), formatter_class=argparse.RawDescriptionHelpFormatter)
    train.add_argument("--config", help="YAML config file; key=value overrides apply on top")
    train.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. loss=drpo loss.delta=0.2 steps=100")
    train.set_defaults(func=cmd_train)
    sub.add_parser("losses", help="print the loss registry").set_defaults(func=cmd_losses)
    weights = sub.add_parser("weights", help="plot gradient-weight curves w(pi - mu)")
    weights.add_argument("--out", default="weights.png", help="PNG file to write")
    weights.add_argument("--losses", nargs="+", default=["ppo_clip", "spo", "dppo_binary_tv", "drpo"],
                         help="registry names or presets to draw")
    weights.set_defaults(func=cmd_weights)
    compare = sub.add_parser("compare", help="off-policy stress test: methods x seeds x conditions, then a report",
                             description=module_doc("drpo.lab.compare"),
                             formatter_class=argparse.RawDescriptionHelpFormatter)
    compare.add_argument("--methods", nargs="+", metavar="METHOD",
                         help="labels of the default list, registry names or presets, NAME:key=value,... (default: all)")
    compare.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 per method and condition")
    compare.add_argument("--conditions", nargs="+", metavar="NAME", help="condition presets (default: all; see --list)")
    compare.add_argument("--workers", type=int, default=2, help="runs in parallel, one process each, sharing the cores (2: two small runs; 1: one large model on "
                         "every core)")
    compare.add_argument("--threads", type=int, help="torch/OpenMP threads of each worker (default: cores / workers); "
                         "--workers 1 --threads 1 leaves the other cores to other work")
    compare.add_argument("--out", default="runs/compare", help="sweep directory (rerun to continue it)")
    compare.add_argument("--target", type=float, help="eval accuracy for 'steps to target' (default: start + 0.15)")
    compare.add_argument("--list", action="store_true", help="print the default methods and the conditions")
    compare.add_argument("overrides", nargs="*", metavar="key=value", help="applied to every run, e.g. steps=60")
    compare.set_defaults(func=cmd_compare)
    report = sub.add_parser("report", help="rebuild a sweep's report.md, figures and results.json from its runs")
    report.add_argument("sweep_dir", help="directory written by `drpo compare`")
    report.add_argument("--target", type=float, help="eval accuracy for 'steps to target' (default: as the sweep)")
    report.add_argument("--baseline", metavar="METHOD", help="the method every other is compared with, paired over "
                        "seeds (default: drpo, else the first method on the drpo loss, else the first method)")
    report.set_defaults(func=cmd_report)
    from drpo.mismatch.model import DEFAULT_ROLLOUTS, rollout_choices  # torch only once a model is measured

    mismatch = sub.add_parser("mismatch", help="training-inference mismatch of log-prob files, or of a model's "
                              "rollouts per precision", description=module_doc("drpo.mismatch.format"),
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    mismatch.add_argument("inputs", nargs="+", metavar="FILE|key=value",
                          help="log-prob files (.jsonl, .parquet) or run directories with log_probs.jsonl; or, "
                          "for the model mode, run-config overrides such as model=tiny task=arith")
    mismatch.add_argument("--out", help="directory for mismatch.md, mismatch.json and the figures (mismatch.png, "
                          "mismatch_by_length.png, mismatch_by_position.png)")
    mismatch.add_argument("--delta", type=float, help="DRPO's delta for the weight figures (default: the loss's "
                          "default); set it to the delta you train with")
    mismatch.add_argument("--rollouts", "--precisions", nargs="+", default=list(DEFAULT_ROLLOUTS),
                          metavar="[ENGINE:]MODE",
                          help="model mode: rollouts to compare with the fp32 trainer, ENGINE:MODE or a bare MODE "
                          f"(its first engine): {rollout_choices()} (llamacpp: llama-architecture models, "
                          "model=smollm2-135m or model.arch=llama; vllm: dump a run's log-probs instead); "
                          "--precisions is the same option")
    mismatch.add_argument("--prompts", type=int, default=32, help="model mode: held-out prompts")
    mismatch.add_argument("--samples", type=int, default=4, help="model mode: responses per prompt")
    mismatch.set_defaults(func=cmd_mismatch)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as error:
        print(f"drpo {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
