"""SIGTERM (what schedulers and `docker stop` send) and SIGINT (Ctrl+C) end a command with one line and the exit
status a shell gives a process its signal ended (128 + the signal's number), never as a success.

A command stops at once: Interrupted is raised where it is, so that the atomic writes (io/outputs.py) drop their
temporary files and leave earlier results whole. A training run stops between two steps instead, after saving a
checkpoint to resume from (tasks/trainer.py sets `graceful` while Lightning fits)."""

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator

SIGNALS = (signal.SIGTERM, signal.SIGINT)

# While set, a signal is handed to it instead of stopping the command at once.
graceful: Callable[[int], None] | None = None


class Interrupted(BaseException):
    """A command stopped by a signal. A BaseException, as KeyboardInterrupt: no `except Exception` on the way up
    takes it for an error to handle."""

    def __init__(self, signum: int, message: str = ""):
        self.signum = signum
        self.message = message or f"stopped by {signal.Signals(signum).name}"
        super().__init__(self.message)

    @property
    def exit_status(self) -> int:
        return 128 + self.signum


def _on_signal(signum: int, frame) -> None:
    if graceful is not None:
        graceful(signum)
        return
    raise Interrupted(signum)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """While the block runs, SIGTERM and SIGINT raise Interrupted; the handlers before it are restored after it (a
    program calling `mbtasks.cli.main` keeps its own). Only the main thread may set handlers: elsewhere, nothing
    changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = {signum: signal.signal(signum, _on_signal) for signum in SIGNALS}
    try:
        yield
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)
