"""The grid as jobs (`ablate --launcher local|slurm`): every point that has not finished is a submitit job (on SLURM
one job array, at most --max-running at once; locally --max-running processes at once, each on its own GPUs), and a
point's state lives in its folder: result.json (its row once it ended) and job.json (its job). A rerun of the same
command starts only the points that are neither finished nor running, and collects the rest."""

import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import submitit

from ..io.outputs import write_text_atomically
from ..launch import JobResources, SchedulerOptions, build_executor
from .plan import Run
from .run import prepare_run_folder, read_result, run_one

JOB_FILE = "job.json"
SLURM_WAITING = {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "SUSPENDED", "CONFIGURING"}
SLURM_RUNNING = {"RUNNING", "COMPLETING", "STAGE_OUT", "RESIZING", "SIGNALING"}


@dataclass
class PointJob:
    """What a point's job runs: train, evaluate and profile the run (run_one), its row written to result.json."""

    run: Run
    recipes: list[Path]
    run_dir: Path
    settings: dict
    profile_only: bool
    latency_runs: int

    def __call__(self) -> str:
        row = run_one(self.run, self.recipes, self.run_dir, self.profile_only, self.latency_runs)
        write_text_atomically(
            self.run_dir / "result.json", json.dumps({"settings": self.settings, "row": row}, indent=2)
        )
        return row["status"]


def point_state(run_dir: Path) -> tuple[str, str]:
    """(done | failed | running | waiting, its job's id) of the point in `run_dir`: its row where it has one, else
    what its job is doing; a point whose job ended without a row failed, one without a job waits."""
    row = read_result(run_dir).get("row")
    job = _read_job(run_dir)
    job_id = job.get("job_id", "")
    if row is not None:
        return ("done" if row.get("status") == "ok" else "failed"), job_id
    if not job:
        return "waiting", ""
    if job.get("launcher") == "local":
        return ("running" if _local_alive(job) else "failed"), job_id
    state = submitit.SlurmJob(folder=job["folder"], job_id=job_id).state
    if state in SLURM_WAITING or state == "UNKNOWN":  # UNKNOWN: sacct has not seen a job just submitted
        return "waiting", job_id
    return ("running" if state in SLURM_RUNNING else "failed"), job_id


def _read_job(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / JOB_FILE).read_text())
    except (OSError, ValueError):
        return {}


def _local_alive(job: dict) -> bool:
    """Whether a local job's controller process is there (on this machine: its process id is only known here)."""
    if job.get("host") != socket.gethostname():
        return True  # another machine's: taken for running, never started twice
    try:
        os.kill(int(job["job_id"]), 0)
    except (ProcessLookupError, ValueError):
        return False
    except PermissionError:
        return True
    return True


def _record_job(run_dir: Path, launcher: str, job: submitit.Job, folder: Path) -> None:
    record = {"launcher": launcher, "job_id": str(job.job_id), "host": socket.gethostname(), "folder": str(folder)}
    write_text_atomically(run_dir / JOB_FILE, json.dumps(record))


def run_grid_as_jobs(
    points: list[tuple[Run, Path, dict]],
    recipes: list[Path],
    out: Path,
    launcher: str,
    max_running: int,
    gpus_per_run: int,
    options: SchedulerOptions,
    timeout_min: int,
    profile_only: bool,
    latency_runs: int,
    log=print,
) -> None:
    """Starts every point (run, its folder, its settings) neither finished nor running. SLURM: one job array, then
    returns; local: `max_running` at once, each on `gpus_per_run` GPUs of its own, and returns when every point of the
    grid has ended (those another command started too)."""
    folder = out / "jobs"
    starting = []
    for run, run_dir, settings in points:
        state, job_id = point_state(run_dir) if read_result(run_dir).get("settings") == settings else ("waiting", "")
        if state in ("done", "running") or (state == "waiting" and job_id):
            log(f"{run_dir.name}: {state}{f' (job {job_id})' if job_id else ''}, not started again")
            continue
        starting.append((run, run_dir, settings))

    def job_of(run: Run, run_dir: Path, settings: dict) -> PointJob:
        prepare_run_folder(run_dir, settings)
        return PointJob(run, recipes, run_dir, settings, profile_only, latency_runs)

    def resources(run: Run) -> JobResources:
        return JobResources(1, 1, gpus_per_run, run.config.data.num_workers + 1, timeout_min)

    if launcher == "slurm":
        if not starting:
            return
        executor = build_executor("slurm", folder, resources(starting[0][0]), options)
        executor.update_parameters(array_parallelism=max_running)
        with executor.batch():
            jobs = [executor.submit(job_of(*point)) for point in starting]
        for job, (_, run_dir, _) in zip(jobs, starting):
            _record_job(run_dir, launcher, job, folder)
            log(f"{run_dir.name}: submitted as SLURM job {job.job_id}")
        return

    active: dict[int, submitit.Job] = {}  # slot -> its job; slot k holds GPUs k*g .. k*g+g-1
    queue = list(starting)
    while queue or active:
        for slot in [slot for slot, job in active.items() if job.done()]:
            del active[slot]
        elsewhere = sum(point_state(run_dir)[0] == "running" for _, run_dir, _ in points) - len(active)
        while queue and len(active) + max(elsewhere, 0) < max_running:
            slot = next(k for k in range(max_running) if k not in active)
            run, run_dir, settings = queue.pop(0)
            gpus = range(slot * gpus_per_run, (slot + 1) * gpus_per_run)
            executor = build_executor("local", folder, resources(run), options, visible_gpus=gpus)
            active[slot] = executor.submit(job_of(run, run_dir, settings))
            _record_job(run_dir, launcher, active[slot], folder)
            log(
                f"{run_dir.name}: started as local job {active[slot].job_id}"
                + (f" on GPUs {list(gpus)}" if gpus else "")
            )
        time.sleep(0.5)
    # The points that other commands run: waited for, so that this command's table holds them.
    while any(point_state(run_dir)[0] == "running" for _, run_dir, _ in points):
        time.sleep(0.5)


def grid_status(out: Path) -> list[tuple[str, str, str]]:
    """(run folder, state, job id) of every point under OUT/runs, by folder name."""
    return [
        (run_dir.name, *point_state(run_dir))
        for run_dir in sorted(Path(out, "runs").iterdir())
        if run_dir.is_dir() and read_result(run_dir)
    ]
