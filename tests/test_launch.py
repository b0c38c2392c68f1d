"""Runs beyond one process, through the `mbtasks` script: `train --launcher local` (submitit's LocalExecutor), a
SLURM job signalled before its time limit that saves, requeues itself and resumes as the same run, the sbatch script
of the COCO recipe on 2 nodes x 8 GPUs, and `torchrun` of two CPU processes."""

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from helpers import MBTASKS, TINY_IMAGE_DATA
from test_faults import ENV, SIGNALLED, _one_line, _train_args, _train_here
from test_training import _assert_the_same_run, _train_task, _weights

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


def test_torchrun_of_two_cpu_processes_trains_as_the_built_in_two_process_run(tmp_path):
    """`torchrun --nproc-per-node 2 -m mbtasks train` (gloo on the CPU; Lightning reads torchrun's environment) and
    Lightning's own 2-process run of the same recipe (tests/test_training.py's tiny embedder): the same weights."""
    common = [f"data.synth_dir={tmp_path / 'data'}", "train.precision=64-true", "data.batch_size=2", "train.devices=2"]
    common += ["train.strategy=ddp"]
    built_in = _train_task("embed", *common, f"train.out_dir={tmp_path / 'built_in'}")
    assert built_in.returncode == 0, built_in.stderr[-3000:]
    torchrun = [str(Path(sys.executable).with_name("torchrun")), "--nproc-per-node", "2", "-m", "mbtasks"]
    launched = _train_task("embed", *common, f"train.out_dir={tmp_path / 'torchrun'}", command=torchrun)
    assert launched.returncode == 0, launched.stderr[-3000:]
    a, b = _weights(tmp_path / "built_in/checkpoints/last.ckpt"), _weights(tmp_path / "torchrun/checkpoints/last.ckpt")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-12, rtol=0), key
    assert torch.load(tmp_path / "torchrun/checkpoints/last.ckpt", weights_only=True)["global_step"] == 2


def test_ablate_with_the_local_launcher_runs_two_points_at_once_and_a_rerun_starts_none_twice(tmp_path):
    """Two grid points as two local jobs at once (--max-running 2) through the `mbtasks` script; the same command
    run again while they run starts neither (each point's job is in its folder) and waits for them; both commands end
    with the table of both points, and --status lists them done."""
    out = tmp_path / "grid"
    grid = ["ablate", "--task", "cls", "--backbones", "v1", "--widths", "0.25,0.5", "--runs", "0", "--out", str(out)]
    settings = [s for s in TINY if not s.startswith("model.")] + [f"data.synth_dir={tmp_path / 'data'}"]
    command = [MBTASKS, *grid, *_sets(settings), "--launcher", "local", "--max-running", "2"]
    with open(tmp_path / "first.out", "w") as stdout, open(tmp_path / "first.err", "w") as stderr:
        first = subprocess.Popen(command, stdout=stdout, stderr=stderr, text=True, env=ENV)
    try:
        runs = [out / "runs" / f"mobilenet_v1_w{width}_r32" for width in ("0.25", "0.5")]
        while first.poll() is None and not all((run / "job.json").exists() for run in runs):
            time.sleep(0.2)
        jobs = [json.loads((run / "job.json").read_text())["job_id"] for run in runs]

        again = subprocess.run(command, capture_output=True, text=True, timeout=1500, env=ENV)
        assert again.returncode == 0, again.stderr[-3000:]
        for run, job in zip(runs, jobs):
            assert re.search(f"{run.name}: (running|done) \\(job {job}\\), not started again", again.stdout), (
                again.stdout
            )
        assert "started as" not in again.stdout
        assert first.wait(timeout=1500) == 0, (tmp_path / "first.err").read_text()[-3000:]
    finally:
        first.kill()
    printed = (tmp_path / "first.out").read_text()
    assert printed.count("started as local job") == 2
    for output in (printed, again.stdout):
        assert "2 runs done, 0 failed; wrote " in output
    for run, job in zip(runs, jobs):
        assert json.loads((run / "job.json").read_text())["job_id"] == job
        assert (run / "log.txt").read_text().count("$ mbtasks train ") == 1  # trained once
    with open(out / "results.csv", newline="") as f:
        assert [(row["width"], row["status"]) for row in csv.DictReader(f)] == [("0.25", "ok"), ("0.5", "ok")]

    status = subprocess.run([MBTASKS, "ablate", "--status", str(out)], capture_output=True, text=True, env=ENV)
    assert status.stdout.splitlines() == [
        f"mobilenet_v1_w0.25_r32  done     job {jobs[0]}",
        f"mobilenet_v1_w0.5_r32   done     job {jobs[1]}",
        "2 done, 0 running, 0 failed, 0 waiting",
    ], status.stderr[-3000:]
