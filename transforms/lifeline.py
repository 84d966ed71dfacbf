"""A run's lifeline: its worker processes die with it, nothing starts once it is gone, and the
next run on the same output folder collects what a killed run left there.

Deliberate choices:
- The run is its launching process (``smelter run``): ``this_run()`` (host, pid) is taken there
  by the graph builder and pickled to every worker with the stages. A SIGKILL gives that
  process no chance to stop anything, so each worker watches it instead.
- In Beam's multi-process DirectRunner a worker's parent is not the run: the run starts it with
  ``Popen(cmd, shell=True)`` from a thread, so the parent is ``/bin/sh``, which outlives the
  run (checked: ``os.getppid()`` in a worker is the shell's pid). ``PR_SET_PDEATHSIG`` alone
  would therefore never fire; it is set anyway (SIGKILL when the shell dies, or the run itself
  where a runner starts workers directly), and a watcher thread waits on a pidfd of the run's
  process (``pidfd_open``: woken the moment it exits, immune to pid reuse), then marks the run
  gone, runs the registered hooks (the sandbox removes its live containers) for at most
  ``HOOK_SECONDS``, and SIGKILLs its own process.
- ``run_gone()`` is the guard every container start checks (and ``StageFn.process`` before a
  record and before caching its outcome), so nothing starts, and no cut-short outcome is
  cached, in the moment between the run's death and the watcher's kill.
- A worker on another host (a real cluster) has no way to watch the run: it is not tied, and
  its runner's own lifecycle applies.
- Output folder: a run holds an exclusive ``flock`` on ``OUT/.smelter.lock`` while it runs (the
  kernel drops it when the process dies, SIGKILL included). Holding it, the run knows no other
  run writes there, so the ``beam-temp-*`` folders Beam's file sinks left are a dead run's and
  are removed; a second concurrent run on the same folder is refused with one line.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import logging
import os
import select
import shutil
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from smelter.transforms.errors import Fatal

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1
HOOK_SECONDS = 15.0
POLL_SECONDS = 0.2  # only where pidfd_open is missing (Linux < 5.3)
LOCK_NAME = ".smelter.lock"
BEAM_TEMP = "beam-temp-*"

Run = tuple[str, int]  # (host name, pid of the launching process)

_lock = threading.Lock()
_tied: Run | None = None
_gone = threading.Event()
_hooks: list[Callable[[], None]] = []


class RunGone(BaseException):
    """The run this worker serves has ended; nothing more may start or be cached.

    A BaseException, like SystemExit: the stage shell confines ``Exception`` to the record
    (``internal_error``, cached), and a record cut short by a dead run must not be.
    """


def this_run() -> Run:
    """The calling process as a run: called where ``smelter run`` builds its graph."""
    return socket.gethostname(), os.getpid()


def current_run() -> Run:
    """The run this process serves: the one it is tied to, else itself."""
    return _tied or this_run()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:  # alive, but someone else's
        return True
    return True


def run_gone() -> bool:
    """True once the run this process is tied to has ended (False when not tied)."""
    if _gone.is_set():
        return True
    tied = _tied
    if tied is not None and not pid_alive(tied[1]):
        _gone.set()
    return _gone.is_set()


def check() -> None:
    """Raise ``RunGone`` when the run this process serves has ended."""
    if run_gone():
        raise RunGone(f"the run (pid {_tied[1] if _tied else '?'}) has ended")


def at_run_death(hook: Callable[[], None]) -> None:
    """Call ``hook`` (from the watcher thread) when the run ends, before this process dies."""
    with _lock:
        if hook not in _hooks:
            _hooks.append(hook)


def set_parent_death_signal(signum: int = signal.SIGKILL) -> bool:
    """``prctl(PR_SET_PDEATHSIG, signum)``: the kernel sends ``signum`` when our parent exits."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0) == 0
    except (OSError, AttributeError):  # not Linux
        return False


def tie_to_run(run: Run | None) -> bool:
    """Make this process die with ``run``; True when a watcher now guards it.

    No-op for no run, a run on another host, or when this process is the run itself (the
    in-memory runners execute stages in the launching process).
    """
    global _tied
    if run is None:
        return False
    host, pid = run
    if host != socket.gethostname() or pid == os.getpid():
        return False
    with _lock:
        if _tied == run:
            return True
        if _tied is not None:  # a worker reused for another run: should not happen
            log.warning("worker already tied to run %s, not to %s", _tied, run)
            return False
        _tied = run
    set_parent_death_signal()
    if not pid_alive(pid):  # launched by a run that died before we got here
        _die(pid)
    threading.Thread(target=_watch, args=(pid,), name="smelter-lifeline", daemon=True).start()
    return True


def _watch(pid: int) -> None:
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        _die(pid)
        return
    except (AttributeError, OSError) as e:  # no pidfd (old kernel): poll instead
        if isinstance(e, OSError) and e.errno not in (errno.ENOSYS, errno.EPERM, errno.EINVAL):
            raise
        while pid_alive(pid):
            _gone.wait(POLL_SECONDS)
        _die(pid)
        return
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    while not poller.poll():
        pass
    _die(pid)


def _die(pid: int) -> None:
    """The run is gone: refuse new work, run the hooks (bounded), then SIGKILL ourselves."""
    _gone.set()
    log.warning("the run (pid %d) has ended; this worker (pid %d) stops", pid, os.getpid())
    hooks = list(_hooks)

    def run_hooks() -> None:
        for hook in hooks:
            try:
                hook()
            except Exception:  # best effort: the next run collects what is left
                log.exception("run-death hook failed")

    t = threading.Thread(target=run_hooks, name="smelter-lifeline-hooks", daemon=True)
    t.start()
    t.join(HOOK_SECONDS)
    os.kill(os.getpid(), signal.SIGKILL)


# --------------------------------------------------------------------------- output folder


@contextlib.contextmanager
def claim_out_dir(out: Path) -> Iterator[list[Path]]:
    """Hold ``out`` for this run; yields the dead runs' ``beam-temp-*`` folders it removed.

    ``Fatal`` when another live run holds the folder: two runs writing the same outputs would
    clobber each other, and this one could not tell their temp folders from a dead run's.
    """
    out.mkdir(parents=True, exist_ok=True)
    f = open(out / LOCK_NAME, "a+")  # noqa: SIM115 - held for the whole run
    try:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise Fatal(
                f"another smelter run is writing to {out}; wait for it or use --out"
            ) from None
        removed = []
        for tmp in sorted(out.glob(BEAM_TEMP)):
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
                removed.append(tmp)
        yield removed
    finally:
        f.close()  # releases the lock
