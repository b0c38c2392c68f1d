"""The one reading of a size given as N or (height, width)."""


def height_width(size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    """(height, width) of a size given as N (square) or as (height, width)."""
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
