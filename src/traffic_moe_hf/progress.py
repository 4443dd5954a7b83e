"""``progress=False`` in the library means no bars at all, as ``--no-progress`` does on the command line.

The recipes' own bars follow their ``progress`` argument, but transformers ("Loading weights") and datasets
("Saving the dataset") draw theirs whatever the caller asked, so a script calling ``finetune(...,
progress=False)`` in a loop fills its log with them. ``library_bars(False)`` turns both libraries' bars off
for the duration of a call and restores what was set before; ``@honours_progress`` does that for a function
with a ``progress`` parameter.
"""

from __future__ import annotations

import contextlib
import functools
import inspect


@contextlib.contextmanager
def library_bars(enabled: bool, transformers: bool = True):
    """``transformers=False``: datasets' bars only (``prepare`` does not import transformers)."""
    if enabled:
        yield
        return
    import datasets

    hf_logging = None
    if transformers:
        from transformers.utils import logging as hf_logging
    datasets_were_on = not datasets.are_progress_bars_disabled()
    transformers_were_on = hf_logging is not None and hf_logging.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    if hf_logging is not None:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if datasets_were_on:
            datasets.enable_progress_bars()
        if transformers_were_on:
            hf_logging.enable_progress_bar()


def honours_progress(fn):
    """Run ``fn`` with the libraries' bars off when its ``progress`` argument is false."""
    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        with library_bars(bool(bound.arguments["progress"])):
            return fn(*args, **kwargs)

    return wrapper
