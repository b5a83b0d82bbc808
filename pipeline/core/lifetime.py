"""Worker processes that die with their parent (a leaf helper: imports nothing of ours).

A DataLoader worker only notices that its parent is gone when it next waits for work; one that is
decoding, or blocked handing a finished batch to a parent that no longer reads, lives on after
the parent is SIGKILLed (hundreds of MB each, until killed by hand). On Linux the kernel can send
the child a signal when its parent dies (``prctl(PR_SET_PDEATHSIG)``); elsewhere, and for the
window before the call takes effect, the parent's pid is compared with the one recorded when the
loader was made.
"""
from __future__ import annotations

import ctypes
import os
import signal
import sys
from typing import Callable

PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int | None = None) -> bool:
    """Ask the kernel to SIGKILL this process when its parent dies; True where that is supported.

    ``parent_pid``: the pid the parent had when it set this up; if this process has already been
    re-parented (the parent died before this call), it exits at once.
    """
    armed = False
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            armed = libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0
        except (OSError, AttributeError):  # no usable libc (static builds, odd platforms): best effort
            armed = False
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(1)
    return armed


class DieWithParent:
    """A picklable ``worker_init_fn``: arm :func:`die_with_parent`, then run ``then(worker_id)`` if given.

    ``ignore_stop_signals``: SIGINT/SIGTERM are left to the main process. Ctrl-C and cluster
    schedulers signal the whole process group; a worker that died of it would make the main process
    fail on its next batch ("DataLoader worker … is killed by signal") instead of saving a
    checkpoint at the step boundary. The main process stops the workers when it exits, and the
    kernel kills them if it dies.
    """

    def __init__(self, then: Callable[[int], None] | None = None, *, ignore_stop_signals: bool = True) -> None:
        self.parent_pid = os.getpid()
        self.then = then
        self.ignore_stop_signals = ignore_stop_signals

    def __call__(self, worker_id: int) -> None:
        die_with_parent(self.parent_pid)
        if self.ignore_stop_signals:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if self.then is not None:
            self.then(worker_id)


def stop_loader_workers(iterator: object, timeout: float = 5.0) -> int:
    """Stop a DataLoader iterator's worker processes for sure; returns how many had to be SIGKILLed.

    Why: the workers ignore SIGTERM (:class:`DieWithParent`), and that is how PyTorch stops a worker
    that does not leave in time, e.g. one blocked handing a batch to a parent that stopped reading
    after an error. Multiprocessing's exit handler then waits for it forever, holding the stage
    lock. The orderly shutdown runs first; whoever is still alive after it is killed.
    """
    workers = list(getattr(iterator, "_workers", None) or [])
    shutdown = getattr(iterator, "_shutdown_workers", None)
    if callable(shutdown):
        shutdown()
    killed = 0
    for w in workers:
        if w.is_alive():
            w.kill()
            w.join(timeout)
            killed += 1
    return killed
