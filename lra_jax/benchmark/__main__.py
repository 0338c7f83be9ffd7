"""`python -m lra_jax.benchmark attention [flags]`: see `lra_jax.benchmark.cli`."""

from __future__ import annotations

from lra_jax.benchmark import cli

if __name__ == "__main__":
  cli.main()
