"""The toy world: a synthetic reasoning task, its verifier, and tiny real transformers models."""
