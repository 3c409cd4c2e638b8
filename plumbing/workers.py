"""Independent calls side by side, one worker process each (frontier.py --jobs): the plumbing, in
one place, so that frontier.py reads as the sweep.

    run_in_workers([(key, log, fn, args), ...], jobs, threads, on_done)

calls fn(*args) for every task in `jobs` fresh interpreters (the spawn start method: no forked
OpenMP or CUDA state), each with `threads` torch threads, its stdout and stderr appended to its
`log` file, and on_done(key, result) in this process as each call returns. A call's exception is
raised here; it, Ctrl-C, or a worker that dies ends the other workers at once. A killed parent
takes its workers with it. fn and args must be picklable (module-level functions, dataclasses),
and a script that starts workers needs its `if __name__ == "__main__":` guard: each worker
imports it.
"""

import contextlib
import os
import sys
import time


def cpu_cores() -> int:
    """The cores this process may run on (a container's or taskset's share, where the OS says)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def run_in_workers(tasks: list, jobs: int, threads: int, on_done):
    """See the module docstring. A worker that dies (killed, out of memory) is a
    ChildProcessError."""
    import multiprocessing as mp
    import signal
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    ctx = mp.get_context("spawn")
    stop = ctx.RawValue("b", 0)  # set to 1: the workers end (read without a lock, see _init)
    pool = None
    try:
        # workers start with Ctrl-C ignored (this process's to handle), even while importing
        sigint = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            pool = ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_init,
                                       initargs=(os.getpid(), threads, stop))
            todo = {pool.submit(_call, log, fn, args): key for key, log, fn, args in tasks}
        finally:
            signal.signal(signal.SIGINT, sigint)
        pending = set(todo)
        while pending:
            done, pending = wait(pending, timeout=1.0, return_when=FIRST_COMPLETED)
            for f in done:
                on_done(todo[f], f.result())  # a call's exception is raised here
    except BrokenProcessPool:
        stop.value = 1
        raise ChildProcessError(
            "a worker process died: killed, or out of memory, or a script that starts workers "
            "without `if __name__ == '__main__':`; the same command resumes (--jobs 1: one "
            "process)") from None
    except BaseException:
        stop.value = 1  # the workers end at once
        raise
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


def _init(parent: int, threads: int, stop):
    """A worker process: `threads` threads for torch; and it ends at once when the parent sets
    `stop` or dies (a SIGKILLed sweep leaves no process behind to write into the folders the next
    run resumes). `stop` is a shared byte read without a lock: a worker killed while holding a
    lock (a multiprocessing.Event's) would leave the parent waiting on it forever."""
    import threading

    import torch

    def watch():
        while os.getppid() == parent and not stop.value:
            time.sleep(0.1)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()
    torch.set_num_threads(threads)


def _call(log: str, fn, args):
    """fn(*args) in a worker, its stdout and stderr appended to `log`."""
    with open(log, "a", buffering=1) as f, contextlib.redirect_stdout(f), \
            contextlib.redirect_stderr(f):
        try:
            return fn(*args)
        finally:
            sys.stdout.flush()
