"""The toy world: a synthetic reasoning task, its verifier, and tiny real transformers models.

- ``dasd.toy.world``: the task (chained arithmetic modulo 10), prompts, ``extract_answer``/``verify``,
  and the teacher's known generating process (solution styles and their mixture).
- ``dasd.toy.build``: ``build_toy_world(out_dir, seed)`` trains the teacher and the student base;
  ``default_toy_dir()`` finds the shipped models (or builds them once into the cache);
  ``evaluate_accuracy(...)`` measures a model on toy problems.
- ``dasd.toy.tokenizer`` / ``dasd.toy.model``: tokenizer and model factories.

See docs/toy-world.md.
"""
