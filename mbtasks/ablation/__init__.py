"""`mbtasks ablate`: grids of runs -> CSV, Markdown, plots; versions x widths x resolutions of one task (and
head families, `--heads`: frameworks on one backbone), as the papers' tables.

Each run trains and evaluates in child processes of its own (`mbtasks train`, then `mbtasks evaluate` of its best
checkpoint, the commands written to RUN_DIR/commands.json and their output to RUN_DIR/log.txt), so a crash in one run
is recorded and the others go on; the parent then profiles the trained network. A run whose RUN_DIR/result.json holds
a finished result for the same resolved config is not run again. A run of other settings is never removed: the new one
goes to RUN_DIR-2 (-3, ...), or replaces it with --overwrite. result.json is replaced whole, never half-written.

With --launcher (jobs.py) every point is a submitit job instead (a SLURM job array, or local processes side by side),
its job recorded in RUN_DIR/job.json, so that a rerun starts no point that is finished, running or queued.
"""

from .plan import Run, default_config, parse_heads, parse_resolutions, parse_versions, parse_widths, plan_runs
from .report import write_outputs
from .run import run_ablation

__all__ = [
    "Run",
    "default_config",
    "parse_heads",
    "parse_resolutions",
    "parse_versions",
    "parse_widths",
    "plan_runs",
    "run_ablation",
    "write_outputs",
]
