"""What every command's flags are made of: argparse types that refuse bad values with one clear
line, and the parser whose usage errors are that one line too (exit code 2)."""
import argparse
import sys

from tinytok import distributed


def _number(convert, allowed, rule):
    """An argparse type: text -> convert(text), refused with a clear message unless allowed."""
    def parse(text):
        try:
            value = convert(text)
        except ValueError:
            kind = "a whole number" if convert is int else "a number"
            raise argparse.ArgumentTypeError(f"expected {kind}, got {text!r}") from None
        if not allowed(value):  # NaN fails every comparison, so it is refused too
            raise argparse.ArgumentTypeError(f"must be {rule}, got {text}")
        return value
    return parse


INF = float("inf")
positive_int = _number(int, lambda v: v >= 1, ">= 1")
non_negative_int = _number(int, lambda v: v >= 0, ">= 0")
seed_value = _number(int, lambda v: 0 <= v < 2 ** 32, "in [0, 2**32)")
positive_float = _number(float, lambda v: 0 < v < INF, "a finite number > 0")
non_negative_float = _number(float, lambda v: 0 <= v < INF, "a finite number >= 0")
probability = _number(float, lambda v: 0 < v <= 1, "in (0, 1]")
fraction = _number(float, lambda v: 0 <= v <= 1, "in [0, 1]")


def fsq_levels(text):
    """An argparse type: "8,5,5,5" -> (8, 5, 5, 5), each level a whole number >= 2."""
    try:
        levels = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected whole numbers joined by commas, such as "
                                         f"8,5,5,5, got {text!r}") from None
    if min(levels) < 2:
        raise argparse.ArgumentTypeError(f"every level must be >= 2, got {text}")
    return levels


def map_sizes(text):
    """An argparse type: "1,2,3,4,5,6,8" -> (1, 2, 3, 4, 5, 6, 8), the multi-scale
    quantizer's maps (that they increase and end at the grid is the config's check)."""
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected whole numbers joined by commas, such as "
                                         f"1,2,3,4,5,6,8, got {text!r}") from None


def pixel_box(text):
    """An argparse type: "4,4,20,20" -> (4, 4, 20, 20), a box (left, top, right, bottom) of
    whole pixels, right and bottom excluded, so left < right and top < bottom. (Whether it
    lies inside the picture is the pipeline's check: only it knows the picture's size.)"""
    try:
        box = tuple(int(part) for part in text.split(","))
    except ValueError:
        box = ()
    if len(box) != 4:
        raise argparse.ArgumentTypeError(f"expected four whole numbers LEFT,TOP,RIGHT,BOTTOM "
                                         f"in pixels, such as 8,8,24,24, got {text!r}")
    left, top, right, bottom = box
    if min(box) < 0 or left >= right or top >= bottom:
        raise argparse.ArgumentTypeError(f"a box needs 0 <= LEFT < RIGHT and 0 <= TOP < "
                                         f"BOTTOM (right and bottom excluded), got {text}")
    return box


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line and exit code 2 (no usage block)."""

    def error(self, message):
        if distributed.launched_rank() != 0:   # under mpiexec: process 0 says it, once
            sys.exit(2)
        sys.stderr.write(f"tinytok: error: {self.prog.replace('tinytok ', '')}: {message}\n")
        sys.exit(2)
