"""Runs beyond one process, through the `mbtasks` script: `train --launcher local` (submitit's LocalExecutor), a
SLURM job signalled before its time limit that saves, requeues itself and resumes as the same run, the sbatch script
of the COCO recipe on 2 nodes x 8 GPUs, and `torchrun` of two CPU processes."""

import os
import signal
import subprocess
import sys

import torch
from helpers import MBTASKS, TINY_IMAGE_DATA
from test_faults import ENV, SIGNALLED, _one_line, _train_args, _train_here
from test_training import _assert_the_same_run

from mbtasks.config import load_config
from mbtasks.launch import JobResources, SchedulerOptions, sbatch_text

# The smallest classifier that trains: 12 images of 32x32 in batches of 4, 2 steps.
TINY = [
    "model.name=mobilenet_v1",
    "model.options={width_mult: 0.25}",
    "train.accelerator=cpu",
    "train.progress_bar=false",
    "train.epochs=1",
    "train.limit_train_batches=2",
    "train.limit_val_batches=1",
    "data.num_workers=0",
    "data.batch_size=4",
    *TINY_IMAGE_DATA["cls"],
]


def _sets(settings: list[str]) -> list[str]:
    return [a for s in settings for a in ("--set", s)]


def test_train_with_the_local_launcher_runs_the_command_as_a_submitit_job(tmp_path):
    out = tmp_path / "run"
    result = subprocess.run(
        [MBTASKS, "train", "--task", "cls", *_sets([*TINY, f"train.out_dir={out}"]), "--launcher", "local", "--wait"],
        capture_output=True,
        text=True,
        timeout=600,
        env=ENV,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    submitted, finished = result.stdout.strip().splitlines()
    job_id = submitted.split()[3].rstrip(":")
    assert submitted == f"submitted local job {job_id}: logs in {out.resolve() / 'jobs'}"
    assert finished == f"job {job_id} finished: {out / 'checkpoints' / 'last.ckpt'}"
    assert torch.load(out / "checkpoints/last.ckpt", weights_only=True)["global_step"] == 2
    assert "last: " in (out / "jobs" / f"{job_id}_0_log.out").read_text()  # the job's own output, in its log


def test_a_slurm_job_signalled_before_its_time_limit_saves_requeues_itself_and_resumes_as_the_same_run(tmp_path):
    """Lightning's SLURM auto-requeue on the run's real path, SLURM faked: the job's variables, and an `scontrol`
    that records its arguments. SIGUSR1 in mid-epoch: the run stops after that step, saves Lightning's HPC checkpoint,
    calls `scontrol requeue 4242` and exits; the same command again (the requeued job) resumes from that checkpoint
    and ends with the uninterrupted run's weights within 1e-6, the same loss and learning rate at every step."""
    data = f"data.synth_dir={tmp_path / 'data'}"
    assert _train_here(data, f"train.out_dir={tmp_path / 'straight'}", None) == 0

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "scontrol.calls"
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    (bin_dir / "scontrol").chmod(0o755)
    slurm = {
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NAME": "mbtasks",
        "SLURM_NTASKS": "1",
        "SLURM_NTASKS_PER_NODE": "1",
        "SLURM_NNODES": "1",
        "SLURM_PROCID": "0",
        "SLURM_LOCALID": "0",
        "SLURM_NODEID": "0",
    }
    env = {**ENV, **slurm, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SIGNAL": "SIGUSR1", "SIGNAL_AT_STEP": "4"}
    out = tmp_path / "job"
    command = [sys.executable, "-c", SIGNALLED, *_train_args(data, f"train.out_dir={out}")]

    first = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    hpc = out / "hpc_ckpt_1.ckpt"
    assert first.returncode == 128 + signal.SIGUSR1, first.stderr[-3000:]
    assert _one_line(first.stderr) == (
        f"mbtasks: stopped by SIGUSR1 after step 4 (epoch 1); saved {hpc} and requeued SLURM job 4242, which "
        "resumes from it"
    )
    assert calls.read_text() == "requeue 4242\n"
    saved = torch.load(hpc, weights_only=True)
    assert saved["global_step"] == 4 and saved["slurm_job"] == "4242"

    requeued = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert requeued.returncode == 0, requeued.stderr[-3000:]
    assert f"resuming the requeued SLURM job from {hpc}" in requeued.stdout
    assert calls.read_text() == "requeue 4242\n"  # not requeued again
    _assert_the_same_run(tmp_path / "straight", out, steps=6)


def test_the_sbatch_script_of_the_coco_recipe_on_two_nodes_of_eight_gpus():
    """What SlurmExecutor submits for the SSDLite COCO recipe with train.num_nodes=2: one task per GPU on each node,
    the recipe's GPUs, CPUs for its loader workers, SIGUSR1 before the time limit, and the srun line that starts
    submitit's job in every task."""
    config = load_config(["ssdlite320_mobilenet_v3_large_coco"], ["train.num_nodes=2"])
    assert (config.train.devices, config.train.num_nodes) == (8, 2)
    resources = JobResources.of_recipe(config, timeout_min=3 * 24 * 60)
    folder = "/scratch/ssdlite/jobs"
    script = sbatch_text(resources, SchedulerOptions(partition="gpu", account="vision", qos="high"), folder)
    flags = {line for line in script.splitlines() if line.startswith("#SBATCH")}
    assert {
        "#SBATCH --nodes=2",
        "#SBATCH --ntasks-per-node=8",
        "#SBATCH --gpus-per-node=8",
        f"#SBATCH --cpus-per-task={config.data.num_workers + 1}",
        "#SBATCH --time=4320",
        "#SBATCH --signal=USR1@120",
        "#SBATCH --partition=gpu",
        "#SBATCH --account=vision",
        "#SBATCH --qos=high",
        "#SBATCH --job-name=mbtasks",
    } <= flags, script
    assert not any(line.startswith(("#SBATCH --constraint", "#SBATCH --ntasks=")) for line in flags)
    srun = [line for line in script.splitlines() if line.startswith("srun")]
    assert srun == [
        f"srun --unbuffered --output {folder}/%j_%t_log.out --error {folder}/%j_%t_log.err "
        f"python -u -m submitit.core._submit {folder}"
    ], script
