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

from typing import Literal, get_args

ToyWorld = Literal["chain", "column"]
WORLDS: tuple[str, ...] = get_args(ToyWorld)
"""The built-in worlds: ``chain`` (``dasd.toy.world``, the demo's) and ``column`` (``dasd.toy.column``)."""


def check_world(world_name: str) -> str:
    """``world_name`` if it is a built-in world, else a ValueError naming them."""
    if world_name not in WORLDS:
        raise ValueError(f"unknown toy world {world_name!r} (the built-in ones: {', '.join(WORLDS)})")
    return world_name


TOY_MODELS = {"toy:teacher": ("chain", "teacher"), "toy:student": ("chain", "student"),
              "toy:column-teacher": ("column", "teacher"), "toy:column-student": ("column", "student")}
"""The model names that stand for the built-in toy models: name -> (world, role)."""
