"""The project's exception: library code raises it, ``traffic-moe`` (:mod:`traffic_moe_hf.cli`) turns it into
the one-line error users see (the message, on stderr, exit status 1), as ``raise SystemExit(message)`` did.

A leaf module (no project imports), so every layer can raise it. Bad input that Python already names well
may raise the builtin instead (``ValueError``, ``FileNotFoundError``); the CLI reports those the same way
when they come from a check of ours (see ``cli.main``).

Notices that are no error (a file that could not be read among many, a caveat about the data, a warning
before training) stay ``print(..., file=sys.stderr)`` in the recipes: they are the command's own words to
its user, one plain line each. ``warnings.warn`` would prefix them with a file and line and show each place
once per process; ``logging`` prints the bare line only while no handler is configured (pytest's, or a
script's ``basicConfig``, would take it off stderr). Each such print says so in a short comment.
"""

from __future__ import annotations


class TrafficMoeError(Exception):
    """A failed run or bad input, with a message that names the file or option and the reason."""
