"""The toy worlds: synthetic reasoning tasks, their verifier, and tiny real transformers models.

- ``dasd.toy.world``: the chain world's task (chained arithmetic modulo 10, the demo's), prompts,
  ``extract_answer``/``verify``, and the teacher's known generating process (solution styles and
  their mixture).
- ``dasd.toy.column``: the column world's (two-digit sums, a teacher that writes some answers column
  by column; the world where the paper's DAS and mixed-policy effects show).
- ``dasd.toy.build``: ``build_toy_world(out_dir, seed, world_name=...)`` trains a world's teacher and
  student base; ``default_toy_dir(world_name)`` finds the shipped models (or builds them once into the cache);
  ``evaluate_accuracy(...)`` measures a model on toy problems.
- ``dasd.toy.tokenizer`` / ``dasd.toy.model``: tokenizer and model factories.

See docs/toy-world.md.
"""

TOY_MODELS = {"toy:teacher": ("chain", "teacher"), "toy:student": ("chain", "student"),
              "toy:column-teacher": ("column", "teacher"), "toy:column-student": ("column", "student")}
"""The model names that stand for the built-in toy models: name -> (world, role)."""
