"""The benches' command lines: a mistake is one line naming the value (`data.py: error: argument --repeats: must be
an integer of at least 1, got '0'`), exit 2, as mbtasks' own commands; argparse alone prints its usage line above
it."""

import argparse

from mbtasks.cli import at_least  # noqa: F401  (the benches' counts, checked as mbtasks' own)


class BenchParser(argparse.ArgumentParser):
    """argparse, with its error as one line."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def positive(text: str) -> float:
    """An argparse type: a number above 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{value} is not above 0")
    return value


def height_by_width(text: str) -> tuple[int, int]:
    """An argparse type: an image size written HxW (1024x2048), both at least 1."""
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be HEIGHTxWIDTH, got {text!r}") from None
    if height < 1 or width < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1x1, got {text!r}")
    return height, width
