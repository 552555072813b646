"""Text processing of responses: pure functions, no I/O.

- ``sentences``: ``segment(text)`` -> sentence character spans covering the text exactly.
- ``align``: tokens of any tokenizer -> sentences (by character offsets), per-sentence scores.
- ``delimiters``: ``normalize_response`` -> canonical ``<think>...</think>`` format, offsets remapped.
- ``repetition``: detectors of degenerate repetition.
- ``filters``: ``FilterConfig``, ``apply_filters``, ``Funnel``.
"""
