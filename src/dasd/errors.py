"""Errors a user can act on. The CLI prints them as one line and exits with code 2."""


class DasdError(Exception):
    """A user-facing error: bad config, bad input file, bad run directory.

    The message must say what is wrong and where (file, line, field) and, when possible,
    what is allowed instead.
    """


class ConfigError(DasdError):
    """A config file or override is invalid."""


class InputError(DasdError):
    """An input file cannot be read at all (missing, unreadable, wrong format)."""


class OutputError(DasdError):
    """An output path cannot be written (it is a directory, a parent is a file, no permission, a
    read-only filesystem); the message names the path. Nothing is half-written."""


class DiskFullError(DasdError):
    """A write failed for lack of space (or quota); the message names the file. Nothing is half-written."""


class ContextLengthError(DasdError):
    """A request longer than the model's context: its prompt (or prompt + continuation to score),
    or, where the server counts it (vLLM, OpenAI), its prompt + ``max_tokens``. The request's own
    fault rather than the run's: the sample stage quarantines such a prompt and goes on."""
