"""Argument types the commands share: each parses one flag's text or says what is wrong with it."""
from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def positive(kind: Callable[[str], float | int], allow_inf: bool = False) -> Callable[[str], float | int]:
    def parse(text: str) -> float | int:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {kind.__name__}") from None
        if not value > 0 or (math.isinf(value) and not allow_inf) or math.isnan(value):
            raise argparse.ArgumentTypeError(f"must be a positive{'' if allow_inf else ' finite'} number, "
                                             f"got {text!r}")
        return value
    parse.__name__ = f"positive {kind.__name__}"
    return parse


def fraction(text: str) -> float:
    """A number from 0 to 1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text!r}")
    return value
