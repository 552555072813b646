"""Ray fan-out: one Engine made of ``ray.replicas`` engine replicas (Ray actors) on a cluster.

    engine:
      kind: vllm                       # or hf / openai: each replica builds its own engine
      model: /shared/models/teacher
      vllm: {tensor_parallel_size: 4}
      ray: {address: auto, replicas: 8, num_gpus: 4}

``make_engine`` returns a ``RayEngine`` whenever ``ray`` is set, so ``sample``, ``score`` and
``eval`` spread their records over the replicas without any change to the stages. Requests are
cut into chunks of ``ray.chunk``, dealt round-robin to the replicas, and collected as they finish.

Same results as one process: every sample draws from its own seed-derived stream and every
record is scored on its own, so which replica takes a record does not change it (up to float
rounding between batch shapes, ~1e-6 in log-probs; tokens, text and offsets are identical).

Lengths as one engine: ``max_len``, ``reserves_max_tokens`` and ``tokenizer`` are the replicas'
(fetched once from the first), ``context_ids`` builds prompt ids with that tokenizer, and a
replica's ``ContextLengthError`` is raised as such (a request's own fault, which the stages
quarantine), not as a failed replica.

Addresses: ``local`` starts a private Ray instance in this process (``replicas`` x ``num_cpus``
CPUs); ``auto`` joins the cluster this node belongs to (``ray start --head`` on one node,
``ray start --address=HEAD:6379`` on the others); ``ray://HEAD:10001`` connects a remote client.
Every node must have dasd installed (same version) and see ``model`` at the same path (or a hub
name). See docs/scale-out.md.

Pitfalls: ray is an optional extra (``pip install 'dasd[ray]'``), imported lazily; each replica
loads its own model copy; ``close()`` (or the end of the process) releases the actors.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from dasd.engines.base import GenerateRequest, Generation, ScoreRequest, ScoreResult, build_context_ids
from dasd.engines.config import EngineConfig
from dasd.errors import ContextLengthError, DasdError

MISSING = (
    "{key} needs the optional ray package, which is not installed: pip install 'dasd[ray]' "
    "(or ray==2.60.0); or remove {key} to run in one process."
)


def import_ray(key: str = "engine.ray"):
    """``ray`` itself, or a DasdError saying how to install it, naming the config ``key`` that asked
    for it (``teacher.ray``: ``EngineConfig.key``)."""
    try:
        import ray
    except ImportError as err:
        raise DasdError(f"{MISSING.format(key=key)} ({err})") from err
    return ray


class _Replica:
    """Ray actor body: one engine built from the config (without its ``ray`` part) of the config
    section ``section`` (its errors name that section's keys, and its model as ``model_key``:
    ``EngineConfig.key``)."""

    def __init__(self, cfg: dict, make_engine, section: str = "engine", model_key: str | None = None):
        engine_cfg = EngineConfig.model_validate(cfg).named(section)
        if model_key and model_key != engine_cfg.key("model"):
            engine_cfg.model_named(model_key)
        self.engine = make_engine(engine_cfg)

    def generate(self, requests: list[GenerateRequest]) -> list[list[Generation]]:
        return self.engine.generate(requests)

    def score(self, requests: list[ScoreRequest]) -> list[ScoreResult]:
        return self.engine.score(requests)

    def count_tokens(self, text: str) -> int:
        return self.engine.count_tokens(text)

    def limits(self) -> dict:
        """What a caller needs to judge a request's length as one engine would: the engine's
        ``max_len``, ``reserves_max_tokens`` and ``tokenizer`` (pickled to the caller)."""
        e = self.engine
        return {"max_len": getattr(e, "max_len", None), "reserves_max_tokens": getattr(e, "reserves_max_tokens", False),
                "tokenizer": getattr(e, "tokenizer", None)}


class RayEngine:
    """``cfg.ray.replicas`` copies of the engine ``cfg`` describes, behind the Engine protocol.

    ``generate_iter`` yields ``(request_index, generation)`` chunk by chunk as replicas finish,
    like the openai engine's, so a caller can write results as they come.
    """

    def __init__(self, cfg: EngineConfig, make_engine):
        if cfg.ray is None:
            raise DasdError(f"RayEngine needs {cfg.key('ray')}")
        ray = import_ray(cfg.key("ray"))
        self.ray = ray
        self.cfg = cfg
        self.name = cfg.model
        r = cfg.ray
        self._started = False
        if not ray.is_initialized():
            try:
                if r.address == "local":
                    ray.init(num_cpus=max(1, int(r.replicas * r.num_cpus + 0.999)), include_dashboard=False,
                             log_to_driver=False, configure_logging=False)
                else:
                    ray.init(address=r.address, log_to_driver=False)
            except Exception as err:  # ConnectionError, RuntimeError, ...
                raise DasdError(f"{cfg.key('ray.address')}: cannot start or join Ray at {r.address!r}: {err}")
            self._started = True
        inner = cfg.model_copy(update={"ray": None}).model_dump(mode="json")
        actor = ray.remote(num_cpus=r.num_cpus, num_gpus=r.num_gpus)(_Replica)
        self.replicas = [actor.remote(inner, make_engine, cfg.section, cfg.key("model")) for _ in range(r.replicas)]
        try:  # fail here, with the replica's message, if the engine cannot be built
            ray.get([a.count_tokens.remote("") for a in self.replicas])
            limits = ray.get(self.replicas[0].limits.remote())
        except Exception as err:
            self.close()
            raise DasdError(f"{cfg.key('ray')}: a replica could not build its engine: {_cause(err)}")
        # as one engine of the config: its context, and the tokenizer the stages judge a prompt's length with
        # (sample quarantines a too-long prompt before asking, mix skips a too-long teacher context)
        self.max_len: int | None = limits["max_len"]
        self.reserves_max_tokens: bool = limits["reserves_max_tokens"]
        self.tokenizer = limits["tokenizer"]

    def generate_iter(
        self, requests: list[GenerateRequest], skip: Callable[[int, int], bool] | None = None
    ) -> Iterator[tuple[int, Generation]]:
        """Yield ``(request_index, generation)`` as chunks finish; ``skip(r, i)`` -> True drops sample i of request r."""
        for start, gens in self._run("generate", list(requests)):
            for k, per_req in enumerate(gens):
                r = start + k
                for g in per_req:
                    if skip is None or not skip(r, g.index):
                        yield r, g

    def _run(self, method: str, items: list) -> Iterator[tuple[int, list]]:
        chunk = self.cfg.ray.chunk
        pending = {}
        for n, s in enumerate(range(0, len(items), chunk)):
            a = self.replicas[n % len(self.replicas)]
            pending[getattr(a, method).remote(items[s : s + chunk])] = s
        while pending:
            ready, _ = self.ray.wait(list(pending), num_returns=1)
            ref = ready[0]
            s = pending.pop(ref)
            try:
                res = self.ray.get(ref)
            except Exception as err:
                cause = getattr(err, "cause", None)
                if isinstance(cause, ContextLengthError):  # a request's own fault, as from one engine
                    raise ContextLengthError(str(cause)) from None
                raise DasdError(f"{self.cfg.key('ray')}: a replica failed: {_cause(err)}")
            yield s, res

    def generate(self, requests: list[GenerateRequest]) -> list[list[Generation]]:
        """Per request, its ``n`` generations in index order."""
        out: list[list[Generation]] = [[] for _ in requests]
        for start, gens in self._run("generate", list(requests)):
            out[start : start + len(gens)] = gens
        return out

    def score(self, requests: list[ScoreRequest]) -> list[ScoreResult]:
        """Per request, teacher-forced log-probs of its continuation."""
        out: list[ScoreResult | None] = [None] * len(requests)
        for start, res in self._run("score", list(requests)):
            out[start : start + len(res)] = res
        return out  # type: ignore[return-value]

    def count_tokens(self, text: str) -> int:
        return self.ray.get(self.replicas[0].count_tokens.remote(text))

    def context_ids(self, messages, prefix: str | None, rid: str) -> list[int]:
        """Prompt ids as a replica builds them (chat template with the generation prompt, or the prefix)."""
        if self.tokenizer is None:
            raise DasdError(f"{self.cfg.key('ray')}: the {self.cfg.kind} replicas have no local tokenizer to build request {rid!r}")
        return build_context_ids(self.tokenizer, str(self.cfg.tokenizer or self.cfg.model), messages, prefix, rid)

    def close(self) -> None:
        """Release the replicas (and the Ray instance, if this engine started it)."""
        for a in self.replicas if hasattr(self, "replicas") else []:
            try:
                self.ray.kill(a)
            except Exception:  # noqa: BLE001 - already gone
                pass
        self.replicas = []
        if self._started and self.ray.is_initialized():
            self.ray.shutdown()
            self._started = False


def _cause(err: Exception) -> str:
    """The innermost message of a Ray task error."""
    cause = getattr(err, "cause", None) or err
    return f"{type(cause).__name__}: {cause}"
