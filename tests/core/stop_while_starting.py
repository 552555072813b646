"""`dasd grade` stopped by SIGTERM at the worst moment: just as its grading pool has handed a new
worker to the fork server, on a machine so loaded that the worker rebuilds the pool's semaphores a
second late (``late_worker``, preloaded into the fork server). Used by tests/core/test_signals.py.

    python stop_while_starting.py DIR
"""

import json
import multiprocessing
import os
import signal
import sys
from multiprocessing import popen_forkserver

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
multiprocessing.get_context("forkserver").set_forkserver_preload(["late_worker"])
_launch, _sent = popen_forkserver.Popen._launch, []


def _launch_then_stop(self, process_obj):
    _launch(self, process_obj)
    if not _sent:  # one SIGTERM, as a scheduler sends (a second one kills at once, by design)
        _sent.append(1)
        os.kill(os.getpid(), signal.SIGTERM)


popen_forkserver.Popen._launch = _launch_then_stop

if __name__ == "__main__":  # the fork server's workers import this file as their main module
    from dasd.cli import main

    d = sys.argv[1]
    with open(f"{d}/problems.jsonl", "w", encoding="utf-8") as f:
        for i in range(40):
            f.write(json.dumps({"id": f"q{i}", "messages": [{"role": "user", "content": f"What is {i} + 1?"}],
                                "answer": str(i + 1), "domain": "math"}) + "\n")
    with open(f"{d}/responses.jsonl", "w", encoding="utf-8") as f:
        for i in range(40):
            f.write(json.dumps({"problem_id": f"q{i}", "text": f"\\boxed{{{i + 1}}}"}) + "\n")
    sys.exit(main(["grade", "--problems", f"{d}/problems.jsonl", "--responses", f"{d}/responses.jsonl",
                   "--out", f"{d}/results.jsonl"]))
