"""`traffic-moe` command line: thin sub-commands that parse arguments, call the library, report.

Each sub-command lives in its own module and exposes ``add_parser(subparsers)`` which registers
an ``argparse`` sub-parser whose ``func`` default is called with the parsed namespace and returns
an exit status. Modules are imported lazily so ``traffic-moe --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .errors import TrafficMoeError

# sub-command name -> module that implements it (module.add_parser(subparsers))
SUBCOMMANDS = {
    "demo": "traffic_moe_hf.demo",
    "prepare": "traffic_moe_hf.data.prepare",
    "pretrain": "traffic_moe_hf.recipes.pretrain",
    "finetune": "traffic_moe_hf.recipes.finetune",
    "evaluate": "traffic_moe_hf.recipes.evaluate",
    "predict": "traffic_moe_hf.recipes.predict",
    "robustness": "traffic_moe_hf.recipes.robustness",
    "bench": "traffic_moe_hf.bench",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="traffic-moe",
        description="Sparse Mixture-of-Experts foundation model for network traffic (HuggingFace plugin).",
    )
    parser.add_argument("--version", action="version", version=version_line())
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in SUBCOMMANDS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if not (err.name and module_name.startswith(err.name)):  # a real missing dependency: say so
                raise
            continue  # sub-command not part of this installation
        sub = module.add_parser(subparsers)
        if name in MODEL_COMMANDS and sub is not None:
            add_threads_option(sub)
    return parser


def version_line() -> str:
    """``traffic-moe --version``: this package's version and those of Python, torch and transformers (read from
    the installed packages' metadata: nothing is imported)."""
    import platform
    from importlib import metadata

    from . import __version__

    def installed(name):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "not installed"

    return (f"traffic-moe {__version__} (Python {platform.python_version()}, torch {installed('torch')}, "
            f"transformers {installed('transformers')})")


#: sub-commands that run a model: they take ``--threads`` (applied once, in :func:`main`, before they run)
MODEL_COMMANDS = {"pretrain", "finetune", "evaluate", "predict", "robustness", "bench", "demo"}


def add_threads_option(p: argparse.ArgumentParser) -> None:
    from .argtypes import at_least

    p.add_argument("--threads", type=at_least(1), default=None, metavar="N",
                   help="CPU threads for the model (torch's intra-op threads). Default: the cores not already busy "
                        "(usable cores less those busy now, at least 1), or OMP_NUM_THREADS when set: "
                        "one thread per core beside another busy process ran predict 6x slower "
                        "(benchmarks/efficiency/busy_sensor.py)")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    check_extras(args.command)
    if getattr(args, "progress", True) is False:
        no_library_bars()
    if hasattr(args, "threads"):  # a command that runs a model (MODEL_COMMANDS)
        from .threads import apply_threads

        apply_threads(args.threads)
    try:
        status = int(args.func(args) or 0)
    except TrafficMoeError as err:  # library code raises; the command reports it in one line (stderr, exit status 1)
        raise SystemExit(str(err)) from None
    except BrokenPipeError:  # `traffic-moe predict - --out - | head`: the reader left; end quietly, as Unix tools do
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes
        return 0
    _leave_process_group()
    return status


#: the extras of setup.cfg, by the modules a sub-command imports when it runs (the base install only loads models)
EXTRAS = {"data": ("dpkt", "datasets", "sklearn"), "train": ("dpkt", "datasets", "sklearn", "accelerate", "matplotlib")}
COMMAND_EXTRA = {"prepare": "data", "predict": "data", "pretrain": "train", "finetune": "train", "evaluate": "train",
                 "robustness": "train", "demo": "train"}
DISTRIBUTION = {"sklearn": "scikit-learn"}  # module -> the name pip installs it by


def check_extras(command: str) -> None:
    """One line naming what is missing and the extra that installs it, before the sub-command starts."""
    from importlib.util import find_spec

    extra = COMMAND_EXTRA.get(command)
    missing = [DISTRIBUTION.get(m, m) for m in EXTRAS.get(extra, ()) if find_spec(m) is None]
    if missing:
        raise SystemExit(f"traffic-moe {command}: needs {', '.join(missing)}, which the [{extra}] extra installs: "
                         f"pip install -e \".[{extra}]\" in the repository's clone (or \".[all]\")")


def no_library_bars() -> None:
    """``--no-progress`` means no bars at all: also transformers' ("Loading weights", "Writing model shards")
    and datasets' ("Saving the dataset"), which a sub-command's own flag does not reach."""
    import datasets
    from transformers.utils import logging as hf_logging

    datasets.disable_progress_bars()
    hf_logging.disable_progress_bar()


def _leave_process_group() -> None:
    """Under torchrun / accelerate launch: all ranks leave the process group together, so that no rank
    exits while another's gloo/NCCL threads still talk to it (which can abort the job after it finished)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
