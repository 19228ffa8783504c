"""The lab: experiments on the core, and what they publish.

The core (losses, trainer, behavior/rollout, models, tasks, config, drpo.mismatch's statistics, integrations)
never imports this package; this package imports the core, and drpo/cli.py sees both.

The off-policy stress test: ``drpo compare`` runs a grid of methods x seeds x conditions, and
``drpo report`` turns the run directories into a report (table, figures, a generated verdict).

    methods.py     which losses compete: default list, ``drpo:delta=0.3`` specs
    conditions.py  named off-policy conditions, each a list of trainer overrides
    compare.py     the sweep, top to bottom: plan, warm up, run, report; the CLI's lists
    jobs.py        the grid of jobs, and what each run directory is worth (skip / resume / extend)
    workers.py     spawned worker processes and the progress display
    collapse.py    the written, tested definition of a collapsed run
    report.py      report.md, figures/*.png and results.json from the runs' files only, built from:
    runs.py        reading a sweep's files (sweep.yaml, each run's metrics, summary, config)
    archive.py     a sweep's finished runs in one runs.tar.xz, read where the run directories are absent
    outcomes.py    the three outcomes (late accuracy, the primary; area under the curve; collapse)
    results.py     the numbers: per run, per condition x method, per swept loss hyper-parameter
    stats.py       paired differences over seeds and their t intervals
    verdict.py     the sentences generated from the numbers (wins by interval, never by threshold)
    figures.py     curves, trust-region fractions, final accuracy, hyper-parameter sweeps

``drpo mismatch``'s report, and the evidence its recommendation reads:

    mismatch_report.py      console tables, mismatch.md, mismatch.png, mismatch.json
    mismatch_references.py  published mismatch figures with their sources
    evidence.py             drpo/mismatch/evidence.json from the committed delta sweep (python -m drpo.lab.evidence)
"""
