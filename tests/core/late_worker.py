"""Preloaded into the fork server by stop_while_starting.py: every semaphore a worker receives is
rebuilt a second late, as on a loaded machine."""

import time
from multiprocessing import synchronize

_setstate = synchronize.SemLock.__setstate__


def _late(self, state):
    time.sleep(1.0)
    _setstate(self, state)


synchronize.SemLock.__setstate__ = _late
