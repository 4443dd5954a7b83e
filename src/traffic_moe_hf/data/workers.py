"""``prepare``'s processes: the input's files (or shards of a large one) worked through by this process and
forked children claiming items from a shared counter, and the progress bar in bytes that moves while a file
is read. Written by hand rather than with ``multiprocessing.Pool``: :func:`run_parallel` says why.
"""

from __future__ import annotations

__all__ = ["ByteProgress", "run_parallel"]


class ByteProgress:
    """The progress bar in bytes, moved while a file is read (not only when it is done): every item
    (a file, or one process's share of a split file) reports how far into its file it has read; with
    worker processes through a shared array, which the main process sums into the bar while it works
    and while it waits."""

    def __init__(self, bar, weights, sizes, shared):
        import multiprocessing as mp

        self.bar, self.weights, self.sizes = bar, weights, sizes
        ctx = mp.get_context("fork") if shared and "fork" in mp.get_all_start_methods() else None
        self.read = ctx.Array("d", len(sizes), lock=False) if ctx else [0.0] * len(sizes)

    def callback(self, j, refresh=True):
        """``on_progress`` of item ``j`` (``refresh``: also move the bar; off in worker processes)."""
        def report(position):
            if position is not None and self.sizes[j] > 0:
                self.read[j] = min(position / self.sizes[j], 1.0)
                if refresh:
                    self.refresh()
        return report

    def finished(self, j):
        self.read[j] = 1.0
        self.refresh()

    def refresh(self):
        done = sum(w * f for w, f in zip(self.weights, self.read))
        if done > self.bar.n:
            self.bar.update(done - self.bar.n)


def run_parallel(items, num_proc, work, done, progress=None):
    """``work(item, on_progress)`` for every one of ``items``, with ``num_proc`` processes: this one plus ``num_proc - 1`` forked
    children, each claiming the next item from a shared counter (biggest files first). The main
    process works too, so no core sits idle while it waits, and its results are never pickled.
    multiprocessing.Pool was 1.2-1.4x on 2 cores here: its first results came ~40 ms late and the
    main process idled. A child that dies (e.g. killed for memory) loses nothing: every item it
    claimed without returning is re-run here afterwards."""
    import multiprocessing as mp
    import queue as queue_mod

    ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
    counter = ctx.Value("i", 0)
    results = ctx.Queue()
    children = [ctx.Process(target=_child, args=(items, counter, results, work, progress), daemon=True) for _ in range(num_proc - 1)]
    for c in children:
        c.start()
    got = set()

    def drain(block):
        """Hand on the children's results that have arrived (``block``: wait up to 0.2 s for one)."""
        got_any = False
        while True:
            try:
                j, res = results.get(timeout=0.2) if block else results.get_nowait()
            except queue_mod.Empty:
                if progress is not None:
                    progress.refresh()  # the children's progress, while this process waits
                return got_any
            got.add(j)
            done(j, res)
            got_any = True
            if block:
                return True

    while True:
        j = _claim(counter)
        if j >= len(items):
            break
        res = work(items[j], progress and progress.callback(j))
        got.add(j)
        done(j, res)
        drain(False)
    claimed = min(counter.value, len(items))
    while len(got) < claimed:
        if not drain(True) and not any(c.is_alive() for c in children):
            drain(False)
            break
    for c in children:
        c.join()
    for j in range(len(items)):  # lost with a dead child
        if j not in got:
            done(j, work(items[j]))


def _claim(counter):
    with counter.get_lock():
        j = counter.value
        counter.value += 1
    return j


def _child(items, counter, results, work, progress=None):
    while True:
        j = _claim(counter)
        if j >= len(items):
            break
        results.put((j, work(items[j], progress and progress.callback(j, refresh=False))))
    results.close()
    results.join_thread()
