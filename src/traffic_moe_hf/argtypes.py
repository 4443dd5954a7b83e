"""argparse types for the CLI's numeric options.

A value out of range is refused when the command line is parsed, as a one-line usage error that names
the option (``argument --batch-size: must be at least 1, got 0``), instead of a ZeroDivisionError or a
torch ValueError minutes later, or a silently meaningless run (a negative idle timeout made every
packet its own flow). argparse has no range checks of its own, hence these few lines.
"""

from __future__ import annotations

import argparse
import math
import os


def _parse(kind, s: str):
    try:
        value = kind(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {'a whole number' if kind is int else 'a number'}, got {s!r}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {s!r}")
    return value


def at_least(minimum: int):
    """A whole number >= ``minimum``."""

    def parse(s: str) -> int:
        value = _parse(int, s)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


def positive(s: str) -> float:
    """A number > 0 (learning rates, epochs, timeouts, temperatures)."""
    value = _parse(float, s)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, got {s}")
    return value


def non_negative(s: str) -> float:
    """A number >= 0 (loss weights, radii; 0 turns the term off)."""
    value = _parse(float, s)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {s}")
    return value


def probability(s: str) -> float:
    """A number in [0, 1]."""
    value = _parse(float, s)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {s}")
    return value


def comma_list(item):
    """A comma list, each entry checked by ``item`` (e.g. :func:`non_negative`); empty entries are skipped."""

    def parse(s: str) -> list:
        return [item(x.strip()) for x in s.split(",") if x.strip()]

    return parse


def steps_or_unset(s: str) -> int:
    """A step count >= 1, or -1 for 'not set' (Trainer's own convention for max_steps)."""
    value = _parse(int, s)
    if value != -1 and value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 (or -1: use --epochs), got {value}")
    return value


def output_folder(s: str) -> str:
    """A folder to write into: not an existing file (that failed only when the Trainer or ``save_to_disk``
    created it, after the data was loaded)."""
    if os.path.exists(s) and not os.path.isdir(s):
        raise argparse.ArgumentTypeError(f"{s} exists and is not a folder")
    _parent_is_a_folder(s)
    return s


def output_file(s: str) -> str:
    """A file to write: not an existing folder (that failed only when the results were written, after
    the work). ``-`` (standard output) passes."""
    if s != "-" and os.path.isdir(s):
        raise argparse.ArgumentTypeError(f"{s} is a folder; give the path of a file (inside it, if you like)")
    if s != "-":
        _parent_is_a_folder(s)
    return s


def _parent_is_a_folder(s: str) -> None:
    """The nearest existing folder above ``s`` must be a folder (``a.txt/out.json`` failed after the work)."""
    parent = os.path.dirname(os.path.abspath(s))
    while parent and not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if parent and not os.path.isdir(parent):
        raise argparse.ArgumentTypeError(f"{s}: {parent} is a file, not a folder")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The commands' help: descriptions as written, and every option's default shown unless its help
    already states it."""

    def _get_help_string(self, action):
        text = action.help or ""
        if (action.option_strings and not _unset(action.default) and "default" not in text.lower()):
            shown = " ".join(map(str, action.default)) if isinstance(action.default, (list, tuple)) else "%(default)s"
            text = f"{text} (default: {shown})".strip()
        return text


def _unset(default) -> bool:
    """Defaults not worth stating: none, flags (True/False; by identity, 0 and 1 are numbers), empty text."""
    return default is None or default is True or default is False or default == "" or default is argparse.SUPPRESS
