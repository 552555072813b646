"""Grading model outputs: answer extraction, math / multiple-choice / code graders, the sandbox that
runs model-written code, metrics, and benchmark loaders. See docs/evaluation.md.

- ``grade.grade_one(problem, text)`` / ``grade.grade_many(pairs, workers=)``
- ``metrics``: ``avg_at_k``, ``pass_at_k``, ``maj_at_k``, ``bootstrap_ci``, ``summarize``, ``format_table``
- ``loaders``: ``load_aime``, ``load_gpqa``, ``load_livecodebench``, ``load_toy``, ``load_problems``, ``load_benchmark``
- ``benchmarks.load_benchmarks``: the benchmarks of ``eval.benchmarks``, read once for `dasd eval` and `dasd analyze`
- ``sandbox.run_python`` and ``sandbox.isolation()``
"""
