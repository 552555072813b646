"""Processes of a training run that stop together: a failure on one reaches every one at once.

Some of a run's work is done by one process alone (the main process writes the checkpoint's
``trainer_state.json``, the final model, the curve, the model card, ``done.json``, the token cache's
``meta.json``, the run's manifest) or by each on its own (its share of the token cache, its part of
a checkpoint). Were such a block to end at a plain barrier, a process whose write failed (a full
disk) would raise while the others waited at the barrier until ``train.dist_timeout_s`` (an hour by
default) and then died with a gloo/NCCL timeout that says nothing of the cause. ``fail_together``
ends the block with one all-reduce of a failure flag instead (as cheap as the barrier it replaces):
the process that failed raises its own one-line error, every other one raises at once
``the main process could not <do X>: see its error`` (or ``process <r> ...``), so all of them exit
promptly with one line each. On one process it costs nothing. A collective inside the block itself
(DeepSpeed or FSDP's sharded ``save_state``) is outside its reach.

A failure anywhere else on one process (out of memory inside a step, an ``on_step`` hook) happens
where the others are already waiting in a collective of the step, or soon will be, which no
agreement can reach. ``stop_together`` covers those: around a whole training run, the process that
fails posts its error in the process group's key-value store (the rendezvous store that
``torchrun`` / ``accelerate launch`` or ``MASTER_ADDR`` point every process to), and on every
process a thread asks the store every ``WATCH_EVERY_S`` seconds whether one has failed. A process
that learns of another's failure and has not stopped on its own after one more look logs
``the main process failed while training (<its error>): see its error`` (or ``process <r>``) and
exits with code 2 at once: it is blocked in a collective that only ``dist_timeout_s`` would end.
The failed process waits (at most ``ACK_WAIT_S``) until every other one has read its post, since it
may hold the store. ``torchrun`` and ``accelerate launch`` stop the other processes of their node
anyway; this stops those of other nodes, and processes a cluster scheduler started, when an NCCL
collective would not notice that a peer is gone.
"""

from __future__ import annotations

import itertools
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from dasd.errors import DasdError
from dasd.log import logger

FirstTrue = Callable[[bool], "int | None"]

WATCH_EVERY_S = 1.0  # how often each process asks the store whether another one has failed (one small request)
ACK_WAIT_S = 10.0  # the longest a failed process waits for the others to have read its failure
LAUNCHER_GRACE_S = 30.0  # how long a process on the failed one's node waits for torchrun's agent to stop it
STOPPED_EXIT = 2  # the exit code of a process stopped because another one failed (as the CLI's one-line errors)
_EVERY_PROCESS = "_dasd_every_process"  # set on an exception every process raises (``fail_together``'s)
_runs = itertools.count()  # one store key per ``stop_together`` block: all processes enter them in the same order

_log = logger("train")


def first_true(state, flag: bool) -> int | None:
    """The lowest process index where ``flag`` is true (every process gets the same answer), or None.
    ``state``: accelerate's ``Accelerator`` or ``PartialState``. One all-reduce, hence also a barrier."""
    if state.num_processes == 1:
        return 0 if flag else None
    import torch
    from accelerate.utils import reduce

    flags = torch.zeros(state.num_processes, device=state.device)
    flags[state.process_index] = float(flag)
    hit = torch.nonzero(reduce(flags, reduction="sum")).flatten().tolist()
    return int(hit[0]) if hit else None


def _on_every_process(err: BaseException) -> BaseException:
    """Mark ``err`` as raised by every process at once (no other process needs telling); ``err``."""
    try:
        setattr(err, _EVERY_PROCESS, True)
    except AttributeError:
        pass
    return err


def _known_everywhere(err: BaseException | None) -> bool:
    """Whether ``err``, or an error it was raised from, is one every process raised (``fail_together``'s)."""
    seen = set()
    while err is not None and id(err) not in seen:
        if getattr(err, _EVERY_PROCESS, False):
            return True
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return False


@contextmanager
def fail_together(agree: FirstTrue | None, doing: str) -> Iterator[None]:
    """Run a block that ends where all processes meet (``agree``: ``first_true`` of the run's
    processes; None for one process). An exception in it on this process is raised here after telling
    the others; when another process failed in it, a ``DasdError``: ``the main process could not
    <doing>: see its error`` (``process <r>`` for another rank). An interrupt (Ctrl-C, SIGTERM) is
    let through without the meeting: it reaches every process anyway."""
    if agree is None:
        yield
        return
    try:
        yield
    except Exception as err:
        agree(True)
        _on_every_process(err)
        raise
    failed = agree(False)
    if failed is not None:
        who = "the main process" if failed == 0 else f"process {failed}"
        raise _on_every_process(DasdError(f"{who} could not {doing}: see its error"))


def _who(rank: int) -> str:
    return "the main process" if rank == 0 else f"process {rank}"


def _summary(err: BaseException) -> str:
    """``Type: first line of the message`` (at most 300 characters), for the other processes' line."""
    line = (str(err).strip().splitlines() or [""])[0]
    text = f"{type(err).__name__}: {line}" if line else type(err).__name__
    return text if len(text) <= 300 else text[:297] + "..."


class _Watcher(threading.Thread):
    """Asks the store every ``WATCH_EVERY_S`` whether another process has failed (``key`` set). When one
    has, it says so (``seen``, and in the store), and unless this process stops on its own meanwhile
    (``stop``), logs the one line and ends the process: its main thread is blocked in a collective with
    the failed process, or soon will be. It waits one more look first, or ``LAUNCHER_GRACE_S`` when
    the failed process is on this node under torchrun's agent (``accelerate launch``, ``torchrun``):
    the agent stops this process once the failed one has exited, and then names that one as the
    root cause."""

    def __init__(self, store, key: str, rank: int, doing: str):
        super().__init__(name="dasd-stop-together", daemon=True)
        self.store, self.key, self.rank, self.doing = store, key, rank, doing
        self.stopped = threading.Event()
        self.seen: tuple[int, str] | None = None  # (failed process, its error)
        self.agent_here = False  # the failed process is on this node, under torchrun's agent

    def line(self) -> str:
        who, what = self.seen
        return f"{_who(who)} failed while {self.doing} ({what}): see its error"

    def stop(self) -> None:
        self.stopped.set()

    def run(self) -> None:
        while not self.stopped.wait(WATCH_EVERY_S):
            try:
                if not self.store.check([self.key]):
                    continue
                who, host, what = self.store.get(self.key).decode().split("\t", 2)
                self.agent_here = host == socket.gethostname() and "TORCHELASTIC_RUN_ID" in os.environ
                self.seen = (int(who), what)
                self.store.add(self.key + "/seen", 1)
            except Exception:  # the store is gone (the process that held it ended): nothing left to watch
                return
            if self.stopped.wait(LAUNCHER_GRACE_S if self.agent_here else WATCH_EVERY_S):  # stopped on its own
                return
            _log.error(self.line())
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(STOPPED_EXIT)


def _post(store, key: str, rank: int, processes: int, err: BaseException) -> None:
    """Tell the other processes (through ``store``) that this one failed with ``err``, and wait until
    each has read it or failed too (at most ``ACK_WAIT_S``): this process may be the one that holds
    the store, which ends with it. The first failure posted is the one the others report."""
    try:
        store.compare_set(key, "", f"{rank}\t{socket.gethostname()}\t{_summary(err)}")
        store.add(key + "/failed", 1)
        deadline = time.monotonic() + ACK_WAIT_S
        while store.add(key + "/seen", 0) + store.add(key + "/failed", 0) < processes and time.monotonic() < deadline:
            time.sleep(0.05)
    except Exception:  # the store is gone: the others are left to their own errors or dist_timeout_s
        pass


def _store_of(state):
    """A connection of its own to the process group's key-value store, or None (one process, no store:
    an MPI process group)."""
    if state.num_processes == 1:
        return None
    try:
        from torch.distributed import distributed_c10d

        return distributed_c10d._get_default_store().clone()
    except Exception:
        return None


@contextmanager
def stop_together(state, doing: str) -> Iterator[None]:
    """Run a long block (``doing``: ``training``) in which an exception on one process, wherever it
    is raised, stops every process (module docstring): the others log ``<who> failed while <doing>
    (<error>): see its error`` and exit with ``STOPPED_EXIT``, or, when they stop on their own
    meanwhile, raise their own error (a low-level one, e.g. gloo's ``Connection closed by peer``,
    becomes a ``DasdError`` with that line, on the failed process's node under torchrun's agent
    only after ``LAUNCHER_GRACE_S``, for the agent to stop it first). ``state``: accelerate's
    ``Accelerator`` or ``PartialState``. An error every process raised (``fail_together``'s) and an
    interrupt are not posted. On one process (or without a store) it does nothing."""
    store = _store_of(state)
    if store is None:
        yield
        return
    key = f"dasd/failed/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/{next(_runs)}"
    watcher = _Watcher(store, key, state.process_index, doing)
    watcher.start()
    try:
        yield
    except Exception as err:
        watcher.stop()
        if watcher.seen is not None:  # another process failed first: this follows from it
            if isinstance(err, DasdError):
                raise
            if watcher.agent_here:  # e.g. gloo's "Connection closed by peer": the agent is about to stop
                time.sleep(LAUNCHER_GRACE_S)  # this process, and names the failed one as the root cause
            raise DasdError(watcher.line()) from err
        if not _known_everywhere(err):
            _post(store, key, state.process_index, state.num_processes, err)
        raise
    finally:
        watcher.stop()
