"""submitit's executors for a job's resources: SlurmExecutor (sbatch, one srun task per device) or LocalExecutor
(this machine); one set of SLURM parameters for both the submission and the sbatch text shown without submitting."""

from dataclasses import dataclass
from pathlib import Path

import submitit
from submitit.slurm.slurm import _make_sbatch_string

from ..errors import MbtasksError
from .resources import JobResources

LAUNCHERS = ("local", "slurm")
# Seconds before the time limit at which SLURM sends SIGUSR1 (Lightning's requeue signal; submitit's own is SIGUSR2):
# time to finish a step and write a checkpoint.
SIGNAL_DELAY_S = 120


@dataclass(frozen=True)
class SchedulerOptions:
    """The site's settings for sbatch, as the user gives them (None: the cluster's default)."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    job_name: str = "mbtasks"


def slurm_parameters(resources: JobResources, options: SchedulerOptions) -> dict:
    """The parameters of submitit's SlurmExecutor (sbatch's, under their names) for these resources and options."""
    parameters = {
        "job_name": options.job_name,
        "nodes": resources.nodes,
        "ntasks_per_node": resources.tasks_per_node,
        "cpus_per_task": resources.cpus_per_task,
        "time": resources.timeout_min,
        "signal_delay_s": SIGNAL_DELAY_S,
        # SIGUSR1 to every task before the time limit: Lightning's SLURMEnvironment requeue signal.
        "additional_parameters": {"signal": f"USR1@{SIGNAL_DELAY_S}"},
    }
    if resources.gpus_per_node:
        parameters["gpus_per_node"] = resources.gpus_per_node
    for key in ("partition", "account", "qos", "constraint"):
        if getattr(options, key) is not None:
            parameters[key] = getattr(options, key)
    return parameters


def sbatch_text(resources: JobResources, options: SchedulerOptions, folder: str | Path) -> str:
    """The sbatch script SlurmExecutor submits for these resources (its own writer), without a cluster."""
    command = f"python -u -m submitit.core._submit {folder}"  # what SlurmExecutor runs, with its interpreter's path
    return _make_sbatch_string(command=command, folder=folder, **slurm_parameters(resources, options))


def build_executor(
    launcher: str, folder: str | Path, resources: JobResources, options: SchedulerOptions, visible_gpus=()
) -> submitit.Executor:
    """submitit's executor of `launcher` writing its logs into `folder`; `visible_gpus`: the local job's GPUs."""
    if launcher == "slurm":
        try:
            executor = submitit.SlurmExecutor(folder=folder)
        except RuntimeError as error:  # no srun on this machine
            raise MbtasksError(f"--launcher slurm: {error}") from None
        executor.update_parameters(**slurm_parameters(resources, options))
        return executor
    if resources.nodes > 1 or resources.tasks_per_node > 1:
        raise MbtasksError(
            f"--launcher local runs one process on this machine; the recipe asks for {resources.nodes} node(s) x "
            f"{resources.tasks_per_node} devices: set train.devices=1 and train.num_nodes=1, or run `mbtasks train` "
            "without --launcher (Lightning starts one process a device)"
        )
    executor = submitit.LocalExecutor(folder=folder)
    executor.update_parameters(
        timeout_min=resources.timeout_min,
        gpus_per_node=resources.gpus_per_node,
        tasks_per_node=1,
        visible_gpus=tuple(visible_gpus),
    )
    return executor
