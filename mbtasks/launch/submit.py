"""Submitting one `mbtasks` command as a job, and waiting for it where asked."""

from collections.abc import Callable
from pathlib import Path

import submitit

from .command_job import CommandJob
from .executors import SchedulerOptions, build_executor
from .resources import JobResources


def submit_command(
    main: Callable[[list[str]], int],
    argv: list[str],
    launcher: str,
    folder: str | Path,
    resources: JobResources,
    options: SchedulerOptions,
) -> submitit.Job:
    """`main(argv)` submitted as a job through submitit (logs and submitit's files in `folder`)."""
    executor = build_executor(launcher, folder, resources, options)
    return executor.submit(CommandJob(main, argv))


def wait_for(job: submitit.Job) -> str:
    """Waits for the job to end; "" where it succeeded, else the last lines of its error log."""
    try:
        job.result()
    except Exception as error:  # noqa: BLE001  (submitit re-raises the job's own failure)
        return str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
    return ""
