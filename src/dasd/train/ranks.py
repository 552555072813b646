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
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from dasd.errors import DasdError

FirstTrue = Callable[[bool], "int | None"]


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
    except Exception:
        agree(True)
        raise
    failed = agree(False)
    if failed is not None:
        who = "the main process" if failed == 0 else f"process {failed}"
        raise DasdError(f"{who} could not {doing}: see its error")
