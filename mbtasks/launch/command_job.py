"""What a submitted job runs: one `mbtasks` command, in each of the job's tasks."""

import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass

# The exit status of a run that saved and requeued its SLURM job (stopped by SIGUSR1: 128 + its number).
REQUEUED_STATUS = 128 + signal.SIGUSR1


@dataclass
class CommandJob:
    """`main(argv)` (the CLI's own entry, handed in by the CLI) as a submitit job. A non-zero status fails the job,
    except a requeued run's: its process ends without a result, which the requeued job writes when it ends."""

    main: Callable[[list[str]], int]
    argv: list[str]

    def __call__(self) -> int:
        status = self.main(self.argv)
        if status == REQUEUED_STATUS:
            sys.exit(status)  # a SystemExit: submitit records no result for it
        if status != 0:
            raise RuntimeError(f"mbtasks {' '.join(self.argv)} ended with exit status {status}")
        return status
