"""Kept for old command lines: runs `python -m lra_jax.benchmark attention` with the same flags.

    python benchmarks/attention.py --methods=nystrom,skyformer --lengths=1024,4096
    python benchmarks/attention.py --torch --out=benchmarks/results/attention_cpu.md

`--out` may name the Markdown file as before (its directory and stem become
the new `--out` and `--name`); every other flag is the new command's (see
`python -m lra_jax.benchmark attention --help` and docs/benchmarks.md).
"""

from __future__ import annotations

import pathlib
import sys

from lra_jax.benchmark import cli


def translate(argv: list[str]) -> list[str]:
  """This script's flags -> the `attention` command's."""
  translated = ["attention"]
  for arg in argv:
    if arg.startswith("--out=") and arg.endswith(".md"):
      path = pathlib.Path(arg.removeprefix("--out="))
      translated += [f"--out={path.parent}", f"--name={path.stem}"]
    else:
      translated.append(arg)
  return translated


if __name__ == "__main__":
  cli.main(translate(sys.argv[1:]))
