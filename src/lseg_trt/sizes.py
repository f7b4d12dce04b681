"""Input-size rules shared by the encoders, the CLI, the exporter and the engine builder.

The decoder adds a stride-2k map to an upsampled stride-4k map, so every stage must halve exactly:
H and W must be multiples of 32 (lang-seg's own resize helper uses `ensure_multiple_of=32`).
"""

from __future__ import annotations

from lseg_trt.errors import InvalidSizeError, LsegTrtError

SIZE_MULTIPLE = 32


def nearest_valid(n: int, multiple: int = SIZE_MULTIPLE) -> tuple[int, int]:
    """The valid sizes just below and just above `n` (equal when `n` is valid)."""
    below = max(multiple, (n // multiple) * multiple)
    above = max(multiple, -(-n // multiple) * multiple)
    return below, above


def check_size(height: int, width: int, multiple: int = SIZE_MULTIPLE) -> None:
    """Raise a ValueError naming the nearest valid sizes if (height, width) cannot be encoded."""
    problems = []
    for axis, n in (("height", height), ("width", width)):
        if n < multiple or n % multiple:
            below, above = nearest_valid(n, multiple)
            nearest = f"{below}" if below == above else f"{below} or {above}"
            problems.append(f"{axis} {n} is not a positive multiple of {multiple} (nearest: {nearest})")
    if problems:
        raise InvalidSizeError("invalid input size: " + "; ".join(problems))


def parse_size(text: str) -> tuple[int, int]:
    """Parse `480` or `480x640` (height x width) into a checked (H, W) pair."""
    parts = text.lower().split("x")
    try:
        numbers = [int(p) for p in parts]
    except ValueError:
        raise LsegTrtError(f"cannot parse size {text!r}: use N or HxW, e.g. 480 or 480x640") from None
    if len(numbers) == 1:
        numbers = numbers * 2
    if len(numbers) != 2:
        raise LsegTrtError(f"cannot parse size {text!r}: use N or HxW, e.g. 480 or 480x640")
    height, width = numbers
    check_size(height, width)
    return height, width


def format_size(size: tuple[int, int]) -> str:
    """`HxW`, the spelling used in file names and tables."""
    return f"{size[0]}x{size[1]}"
