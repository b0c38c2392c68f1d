"""Where a run goes: this machine (`mbtasks train` itself), a job on this machine (submitit's LocalExecutor) or a
SLURM job (submitit's SlurmExecutor), with the resources the recipe's trainer settings imply.

A SLURM job is sent SIGUSR1 before its time limit (or when preempted); the run then stops after the step at hand,
saves Lightning's HPC checkpoint and requeues its job (Lightning's SLURM auto-requeue: tasks/trainer.py StopOnSignal),
and the requeued job resumes from that checkpoint as the same run. Several machines without SLURM: `torchrun`, whose
environment Lightning reads (README)."""

from .command_job import REQUEUED_STATUS, CommandJob
from .executors import LAUNCHERS, SchedulerOptions, build_executor, sbatch_text, slurm_parameters
from .resources import JobResources
from .submit import submit_command, wait_for

__all__ = [
    "LAUNCHERS",
    "REQUEUED_STATUS",
    "CommandJob",
    "JobResources",
    "SchedulerOptions",
    "build_executor",
    "sbatch_text",
    "slurm_parameters",
    "submit_command",
    "wait_for",
]
