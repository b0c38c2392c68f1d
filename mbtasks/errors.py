"""The one error type for user mistakes: bad files, bad annotations, bad configs, wrong checkpoints."""


class MbtasksError(Exception):
    """A user-facing problem; the CLI prints its message on one line and exits 2."""

    def __init__(self, problem: str, path: object = None):
        self.path = path
        super().__init__(f"{path}: {problem}" if path is not None else problem)
