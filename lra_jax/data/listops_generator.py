"""The LRA ListOps generator (lra_official_jax.md §2), seeded and deterministic.

A ListOps example is a nested expression over the digits 0-9 with the
operators MIN, MAX, MED (median, truncated) and SM (sum modulo 10), e.g.
`[MAX 2 9 [MIN 4 7 ] 0 ]`, and its value is the label. The algorithm is the
official one: a root made at depth 1, each node a leaf with probability 0.75
(always at `max_depth`), otherwise an operator over 2..`max_args` children;
trees are kept when `min_length < length < max_length` (both strict) and
deduplicated; the first `num_train` make the training split, the next
`num_val` validation and the last `num_test` test.

Two deliberate differences from the official script, neither of which changes
the distribution of examples: randomness comes from `random.Random(seed)` (the
official script never seeds), and duplicates are removed in insertion order
(the official Python `set` orders trees by string hash, so its split
membership differs from run to run).
"""

from __future__ import annotations

import csv
import dataclasses
import os
import pathlib
import random
import statistics
from typing import Any, Callable, Union

OPERATORS = ("[MIN", "[MAX", "[MED", "[SM")
CLOSE = "]"
# Probability that a node above max_depth is an operator rather than a leaf.
OPERATOR_PROBABILITY = 0.25

SPLITS = ("train", "val", "test")

# A tree is a digit, or (body, CLOSE) where body is the operator token
# left-nested with its children: ((((op, c1), c2), ...), cn).
Tree = Union[int, tuple]


@dataclasses.dataclass(frozen=True)
class GeneratorSettings:
  """Sizes and shapes of a generated ListOps data set (official defaults)."""

  num_train: int = 96_000
  num_val: int = 2_000
  num_test: int = 2_000
  min_length: int = 500  # exclusive lower bound on tokens per example
  max_length: int = 2_000  # exclusive upper bound
  max_depth: int = 10
  max_args: int = 10
  seed: int = 0


def sample_tree(rng: random.Random, depth: int, max_depth: int, max_args: int) -> tuple[Tree, int]:
  """A random tree and its length in tokens (operator and close tokens included)."""
  draw = rng.random() if depth < max_depth else 1.0
  if draw > OPERATOR_PROBABILITY:
    return rng.randint(0, 9), 1
  num_children = rng.randint(2, max_args)
  children = [sample_tree(rng, depth + 1, max_depth, max_args) for _ in range(num_children)]
  body: Tree = rng.choice(OPERATORS)
  length = 2
  for child, child_length in children:
    body = (body, child)
    length += child_length
  return (body, CLOSE), length


def to_string(tree: Tree) -> str:
  """The release's text form: every pair (a, b) printed as `( a b )`."""
  if isinstance(tree, tuple):
    return f"( {to_string(tree[0])} {to_string(tree[1])} )"
  return str(tree)


def _apply(operator: str, args: list[int]) -> int:
  if operator == "[MIN":
    return min(args)
  if operator == "[MAX":
    return max(args)
  if operator == "[MED":
    return int(statistics.median(args))  # numpy's median, truncated, as official
  return sum(args) % 10


def evaluate(tree: Tree) -> int:
  """The label: the value of the expression, a digit."""
  if isinstance(tree, int):
    return tree
  body, args = tree[0], []
  while isinstance(body, tuple):
    body, child = body
    args.append(evaluate(child))
  return _apply(body, args[::-1])


def generate(settings: GeneratorSettings,
             progress: Callable[[int], Any] | None = None) -> dict[str, list[tuple[str, int]]]:
  """{'train', 'val', 'test'} -> [(source text, label)], deterministic in the settings.

  `progress(1)` is called for every new example kept (e.g. a tqdm bar's update).
  """
  if settings.min_length + 1 >= settings.max_length:
    raise ValueError(f"No length fits strictly between min_length={settings.min_length} and "
                     f"max_length={settings.max_length}.")
  rng = random.Random(settings.seed)
  wanted = settings.num_train + settings.num_val + settings.num_test
  examples: dict[str, int] = {}
  while len(examples) < wanted:
    tree, length = sample_tree(rng, 1, settings.max_depth, settings.max_args)
    if settings.min_length < length < settings.max_length:
      source = to_string(tree)
      if source not in examples:
        examples[source] = evaluate(tree)
        if progress is not None:
          progress(1)
  rows = list(examples.items())
  first_test = settings.num_train + settings.num_val
  return {"train": rows[:settings.num_train], "val": rows[settings.num_train:first_test],
          "test": rows[first_test:]}


def tsv_path(data_dir: str | os.PathLike, split: str) -> pathlib.Path:
  """Where the release keeps a split: `<data_dir>/basic_<split>.tsv`."""
  return pathlib.Path(data_dir) / f"basic_{split}.tsv"


def write_tsvs(data_dir: str | os.PathLike, settings: GeneratorSettings,
               progress: Callable[[int], Any] | None = None) -> list[pathlib.Path]:
  """Generates and writes basic_{train,val,test}.tsv as the LRA release lays them out
  (header `Source<TAB>Target`, one example a row). Each file appears whole or
  not at all, so concurrent writers with the same settings are harmless."""
  data_dir = pathlib.Path(data_dir)
  data_dir.mkdir(parents=True, exist_ok=True)
  paths = []
  for split, rows in generate(settings, progress).items():
    path = tsv_path(data_dir, split)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", newline="") as f:
      writer = csv.writer(f, delimiter="\t", lineterminator="\n")
      writer.writerow(["Source", "Target"])
      writer.writerows(rows)
    tmp.replace(path)
    paths.append(path)
  return paths
