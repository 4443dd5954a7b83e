"""Outputs that appear whole or not at all: a failed run leaves the earlier output byte for byte as it was.

Every output is written under a temporary name beside its destination (same folder, so the same filesystem)
and moved into place with ``os.replace`` only when complete; on any error (or Ctrl-C) the temporary is
removed and the destination is untouched. Used for ``predict``'s CSV/JSON, ``evaluate``'s JSON and plots,
``prepare``'s dataset folder and the final checkpoint folder of ``pretrain`` / ``finetune``.

Hand-written: the standard library has the pieces (``tempfile``, ``os.replace``) but no "write then move"
helper, and no folder swap; a dependency for ~100 lines was not worth it. A leaf module: no project imports.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path


def _umask() -> int:
    try:  # Linux: read, not set (setting it and back would race with files other threads create)
        with open("/proc/self/status") as f:
            return next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError):
        mask = os.umask(0)
        os.umask(mask)
        return mask


def _target(path) -> tuple[Path, bool]:
    """Where a file output goes and whether it can be replaced atomically: a link is followed (its target is
    replaced, the link kept); a device or pipe (``/dev/stdout``, a FIFO), or anything named under /dev or /proc,
    is written in place."""
    final = Path(path)
    if os.path.abspath(final).startswith(("/dev/", "/proc/")):  # /dev/stdout: whatever fd 1 is, written through
        return final, False
    if final.is_symlink():
        final = final.resolve()
    return final, not final.exists() or final.is_file()


def _give_mode(tmp: str, final: str, folder: bool = False) -> None:
    """``mkstemp`` / ``mkdtemp`` create private (0600 / 0700) entries: give the temporary the mode the file
    it replaces had, else what a plain ``open`` / ``mkdir`` would have given it (0666 / 0777 less the umask)."""
    try:
        mode = os.stat(final).st_mode & 0o7777
    except OSError:
        mode = (0o777 if folder else 0o666) & ~_umask()
    os.chmod(tmp, mode)


def _temp_name(final: Path) -> tuple[str, str]:
    return str(final.parent), f".{final.name}."


def _temp_file(final: Path) -> tuple[int, str]:
    """A new hidden file beside ``final``: ``.NAME.<random>.tmp.EXT`` (ending in ``final``'s extension, which
    writers that choose the format by it, like matplotlib's ``savefig``, need)."""
    folder, prefix = _temp_name(final)
    return tempfile.mkstemp(dir=folder, prefix=prefix, suffix=".tmp" + final.suffix)


@contextlib.contextmanager
def atomic_path(path):
    """A temporary file name beside ``path`` to write to (``savefig``, ``save_file``, ...): moved onto ``path``
    when the block ends without an error, removed otherwise."""
    final, replaceable = _target(path)
    if not replaceable:
        yield final
        return
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _temp_file(final)
    os.close(fd)
    try:
        yield Path(tmp)
        _give_mode(tmp, str(final))
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_open(path, mode: str = "w", **kwargs):
    """``open(path, mode)`` whose content replaces ``path`` only when the block ends without an error."""
    if not any(m in mode for m in "wx"):
        raise ValueError(f"atomic_open: mode {mode!r} does not write a new file")
    with atomic_path(path) as tmp:
        with open(tmp, mode, **kwargs) as f:
            yield f
            f.flush()
            if tmp.is_file():
                os.fsync(f.fileno())


def write_text(path, text: str, encoding: str = "utf-8") -> Path:
    """``Path(path).write_text(text)``, atomically."""
    with atomic_open(path, "w", encoding=encoding) as f:
        f.write(text)
    return Path(path)


class AtomicFile:
    """A file written over time (streamed rows) that replaces ``path`` only on :meth:`commit`; :meth:`discard`
    (or garbage after neither) leaves ``path`` as it was. ``file``: the open temporary, named ``name``."""

    def __init__(self, path, mode: str = "w", **kwargs):
        self.path, self.replaceable = _target(path)
        if not self.replaceable:  # a device or pipe: written as it comes
            self.name, self.file = str(self.path), open(self.path, mode, **kwargs)
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, self.name = _temp_file(self.path)
        self.file = os.fdopen(fd, mode, **kwargs)

    def commit(self) -> Path:
        self.file.flush()
        if self.replaceable:
            os.fsync(self.file.fileno())
        self.file.close()
        if self.replaceable:
            _give_mode(self.name, str(self.path))
            os.replace(self.name, self.path)
        return self.path

    def discard(self) -> None:
        if not self.file.closed:
            self.file.close()
        if self.replaceable:
            with contextlib.suppress(OSError):
                os.unlink(self.name)


def staging_folder(path, name: str | None = None) -> Path:
    """A new empty folder beside ``path`` to build a replacement in (for :func:`replace_folder`). ``name``: a
    fixed name instead of a random one (processes of one distributed run must agree on it)."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    if name is not None:
        staging = final.parent / name
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
    else:
        folder, prefix = _temp_name(final)
        staging = Path(tempfile.mkdtemp(dir=folder, prefix=prefix, suffix=".tmp"))
    _give_mode(str(staging), str(final), folder=True)
    return staging


def replace_folder(staging, path, carry=None) -> list[str]:
    """Put the complete folder ``staging`` in place of ``path``. Entries of the earlier ``path`` that ``staging``
    lacks and ``carry(name)`` accepts (default: all) are moved into the new folder (a user's notes, a Trainer's
    ``checkpoints/``); the rest of the earlier folder is deleted. Returns the names carried over.

    Two renames (``path`` aside, ``staging`` in) and then the carried entries: were the process killed in
    between, nothing is lost, the earlier folder is the hidden ``.NAME.*.old`` beside it. Where ``path`` cannot
    be renamed (a mount point), or is the working directory or above it, its entries are replaced one by one
    instead, each whole."""
    staging, final = Path(staging), Path(path)
    if final.is_symlink():  # a link to the output folder: replace the folder it points to, keep the link
        final = final.resolve()
    if not final.exists():
        os.replace(staging, final)
        return []
    if not final.is_dir():
        raise FileExistsError(f"{path}: exists and is not a folder")
    new = {p.name for p in staging.iterdir()}
    keep = [p.name for p in final.iterdir() if p.name not in new and (carry is None or carry(p.name))]
    cwd = Path.cwd().resolve()
    if final.resolve() in (cwd, *cwd.parents) or os.path.ismount(final):
        _replace_entries(staging, final, new, keep)
        return keep
    folder, prefix = _temp_name(final)
    old = Path(tempfile.mkdtemp(dir=folder, prefix=prefix, suffix=".old"))
    try:
        os.replace(final, old / final.name)
    except OSError:  # the folder itself cannot be moved: entry by entry
        os.rmdir(old)
        _replace_entries(staging, final, new, keep)
        return keep
    os.replace(staging, final)
    for name in keep:
        os.replace(old / final.name / name, final / name)
    shutil.rmtree(old, ignore_errors=True)
    return keep


def _replace_entries(staging: Path, final: Path, new: set, keep: list) -> None:
    """``replace_folder`` inside ``final``: each new entry replaces its namesake whole (a folder is moved aside
    first), then the earlier entries neither replaced nor kept are deleted."""
    earlier = {p.name for p in final.iterdir()}
    for entry in list(staging.iterdir()):
        target = final / entry.name
        if target.is_dir() and not target.is_symlink():
            aside = Path(tempfile.mkdtemp(dir=final, prefix=f".{entry.name}.", suffix=".old"))
            os.replace(target, aside / entry.name)
            os.replace(entry, target)
            shutil.rmtree(aside, ignore_errors=True)
        else:
            os.replace(entry, target)
    for name in earlier - new - set(keep):
        entry = final / name
        shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
    staging.rmdir()


@contextlib.contextmanager
def atomic_folder(path, carry=None, name: str | None = None):
    """Build a folder in a staging folder beside ``path`` (yielded); when the block ends without an error it
    replaces ``path`` (:func:`replace_folder`, ``carry`` as there); on an error it is removed and ``path`` is
    untouched."""
    staging = staging_folder(path, name)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    replace_folder(staging, path, carry)


def _weights(name: str) -> bool:
    """A model weights file of a Hub folder (an earlier model's: never carried into a new one)."""
    return name.startswith(("model.safetensors", "model-0", "pytorch_model")) or name.endswith(
        (".safetensors", ".safetensors.index.json"))


@contextlib.contextmanager
def atomic_checkpoint(path, is_main: bool = True, barrier=None, mentions=("README.md",)):
    """A model folder (``save_pretrained``'s, tokenizer, card) built in ``.NAME.saving`` beside ``path`` and
    moved into place complete (:func:`replace_folder`): a run failing or killed while saving leaves an earlier
    model in ``path`` byte for byte as it was. Entries of the earlier folder the new one lacks are carried over
    (the Trainer's ``checkpoints/`` that ``--resume`` reads, a user's notes), except model weights files (an
    earlier sharded model's shards beside new single-file weights would load the old ones).

    Distributed runs: every process saves into the same fixed-name staging folder (``save_pretrained`` writes
    on the main one); ``is_main`` creates it and moves it into place, ``barrier()`` (e.g. accelerate's
    ``wait_for_everyone``) keeps the others in step. ``mentions``: files in which the staging folder's path is
    replaced by ``path`` (a model card naming the folder it was written in)."""
    final = Path(path)
    staging = final.parent / f".{final.name}.saving"
    if is_main:
        staging_folder(final, staging.name)
    if barrier is not None:
        barrier()
    try:
        yield staging
        if barrier is not None:
            barrier()
    except BaseException:
        if is_main:
            shutil.rmtree(staging, ignore_errors=True)
        raise
    if is_main:
        for name in mentions:
            mention = staging / name
            if mention.is_file():
                text = mention.read_text()
                if str(staging) in text:
                    mention.write_text(text.replace(str(staging), str(final)))
        replace_folder(staging, final, carry=lambda name: not _weights(name))
    if barrier is not None:
        barrier()
