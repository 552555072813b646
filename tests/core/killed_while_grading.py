"""Grades in a two-worker pool, one response a program that sleeps for ten minutes in the code
sandbox; the test SIGKILLs this process meanwhile (tests/core/test_signals.py)."""

from dasd.grading.grade import grade_many

SLEEPER = "```python\nopen('started', 'w').write('1')\nimport time\ntime.sleep(600)\n```"

if __name__ == "__main__":
    tests = {"style": "stdio", "cases": [{"input": "", "output": "x"}], "case_timeout_s": 600}
    pairs = [({"id": "code", "tests": tests}, SLEEPER)]
    pairs += [({"id": f"m{i}", "answer": "3"}, "\\boxed{3}") for i in range(8)]
    grade_many(pairs, workers=2, chunksize=1)
