"""Published LRA results, shipped as package data: one JSON file per source.

    from lra_jax import published
    published.sources()                    # ['lra_official', 'nystromformer', ...]
    published.load("skyformer")["source"]  # paper, venue, table
    for entry in published.entries(protocol="pytorch_lra"):
      entry.method, entry.attention, entry.accuracy["text"]

Every file has `source` (paper, authors, venue, citation, table), `protocol` (which of
our protocols the numbers were measured under: `official` = Google's LRA JAX
code, `pytorch_lra` = the PyTorch LRA harness of Nyströmformer, Skyformer,
Skeinformer and Spectraformer), `protocol_notes` (how the source's training
differs from ours), `tasks`, `average_over` (the tasks the published average
is over) and `entries`. An entry is one published row:

* `method`: the name as the paper spells it;
* `attention`: the registry name here (`lra_jax.attention.names()`), or null
  for a method not implemented here;
* `attention_kwargs`: the hyper-parameters that define the row (what a run's
  `model.attention_kwargs` must hold to be compared with it), and
  `task_attention_kwargs`: per-task changes to them;
* `reference_options`: further options that reproduce the source code's
  quirks (documented on each attention module); not needed for a match;
* `accuracy` (test accuracy, %, per task; strings such as "FAIL" as
  published), `std` (where the source gives one), `average` (as published;
  `average_exceptions` names rows whose published average is not the mean
  of their task columns);
* `match`: false when the row's settings cannot be expressed here (it is
  then never put beside a run); `notes`.

Numbers are copied exactly from the tables cited in `source.table` (via the
notes in the project's reference material). SchoenbAt publishes no LRA
numbers (its repository has none), so it has no file.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.resources
import json
from typing import Any, Mapping

# The five LRA tasks every average is over (Path-X appears only in the
# official leaderboard, as "pathx").
TASKS = ("listops", "text", "retrieval", "image", "pathfinder")


@dataclasses.dataclass(frozen=True)
class Entry:
  """One published row (see the module docstring for the fields)."""

  source_id: str
  source: Mapping[str, Any]
  protocol: str
  method: str
  attention: str | None
  attention_kwargs: Mapping[str, Any]
  task_attention_kwargs: Mapping[str, Mapping[str, Any]]
  reference_options: Mapping[str, Any]
  accuracy: Mapping[str, float | str]
  std: Mapping[str, float]
  average: float | None
  average_over: tuple[str, ...]
  match: bool
  notes: str | None

  @property
  def citation(self) -> str:
    """Short reference, e.g. 'Chen et al., NeurIPS 2021 (Skyformer)'."""
    return self.source["citation"]

  @property
  def five_task_average(self) -> float | None:
    """The published average if it is over the five LRA tasks, else None."""
    return self.average if set(self.average_over) == set(TASKS) else None

  def kwargs_for(self, task: str) -> dict[str, Any]:
    """The hyper-parameters that define this row on `task`."""
    return {**self.attention_kwargs, **self.task_attention_kwargs.get(task, {})}

  def matches(self, attention: str, protocol: str, attention_kwargs: Mapping[str, Any],
              task: str) -> bool:
    """Whether a run of `attention` with `attention_kwargs` under `protocol` on
    `task` has this row's defining settings (it may set other fields too)."""
    if not self.match or self.attention != attention or self.protocol != protocol:
      return False
    return all(key in attention_kwargs and attention_kwargs[key] == value
               for key, value in self.kwargs_for(task).items())


def sources() -> list[str]:
  """The ids of the shipped sources (file names without .json), sorted."""
  files = importlib.resources.files(__name__).iterdir()
  return sorted(f.name[:-len(".json")] for f in files if f.name.endswith(".json"))


@functools.cache
def _load_text(source_id: str) -> str:
  path = importlib.resources.files(__name__) / f"{source_id}.json"
  if not path.is_file():
    raise KeyError(f"No published source {source_id!r}; the shipped ones are: "
                   f"{', '.join(sources())}.")
  return path.read_text(encoding="utf-8")


def load(source_id: str) -> dict[str, Any]:
  """The raw JSON of one source (a fresh copy: callers may modify it)."""
  return json.loads(_load_text(source_id))


def entries(protocol: str | None = None) -> list[Entry]:
  """Every published row of every source, or of those measured under `protocol`."""
  rows = []
  for source_id in sources():
    data = load(source_id)
    if protocol is not None and data["protocol"] != protocol:
      continue
    for row in data["entries"]:
      rows.append(Entry(
          source_id=source_id, source=data["source"], protocol=data["protocol"],
          method=row["method"], attention=row["attention"],
          attention_kwargs=row["attention_kwargs"],
          task_attention_kwargs=row.get("task_attention_kwargs", {}),
          reference_options=row.get("reference_options", {}), accuracy=row["accuracy"],
          std=row.get("std", {}), average=row.get("average"),
          average_over=tuple(data["average_over"]), match=row.get("match", True),
          notes=row.get("notes")))
  return rows
