"""Results of training runs: one run's summary, and LRA tables over many runs.

    python -m lra_jax.results runs/sweep                      # Markdown on stdout + PNG chart
    python -m lra_jax.results runs/a runs/b --out=lra.md --checkpoint=final

The command finds every results.json under the given workdirs (searching
subdirectories), reads the config.json beside it for the seed and the
attention hyper-parameters, and groups the runs by (method and its
hyper-parameters, protocol); per task it reports the test accuracy, mean ±
sample standard deviation over the runs (one per seed), and the average over
the five tasks. Beside each group it puts the published numbers of the rows
that match it (same registry name and protocol, and the hyper-parameters that
define the published row; `lra_jax.published`).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import math
import pathlib
import statistics
import sys
from typing import Any, Iterable, Mapping, Sequence

from lra_jax import errors, published

RESULTS_FILE = "results.json"  # = trainer.RESULTS_FILE (not imported: the trainer pulls in jax)
CONFIG_FILE = "config.json"  # = trainer.CONFIG_FILE
TASK_TITLES = {"listops": "ListOps", "text": "Text", "retrieval": "Retrieval", "image": "Image",
               "pathfinder": "Pathfinder", "pathx": "Path-X"}
CHECKPOINTS = ("best", "final")
PUBLISHED_CHOICES = ("matching", "all", "none")


def summary(report: dict[str, Any], workdir: str | pathlib.Path) -> str:
  """A few lines: accuracy of the final and best checkpoints beside the
  majority-class baseline, and where the logs are."""
  lines = [f"{report['task']} / {report['attention']} / {report['protocol']} protocol"]
  for which in ("final", "best"):
    if which in report:
      entry = report[which]
      lines.append(
          f"  {which:5s} (step {entry['step']:>6d}): validation accuracy "
          f"{100 * entry['validation']['accuracy']:6.2f}%   test accuracy "
          f"{100 * entry['test']['accuracy']:6.2f}%")
  lines.append(f"  majority-class baseline on test: "
               f"{100 * report['test_majority_class_accuracy']:6.2f}%")
  lines.append(f"  TensorBoard logs: tensorboard --logdir={pathlib.Path(workdir).absolute()}")
  return "\n".join(lines)


# ------------------------------------------------------------------ collecting


@dataclasses.dataclass(frozen=True)
class RunResult:
  """One finished training run.

  Attributes:
    workdir: the run's workdir (where results.json is).
    task, attention, protocol: from results.json.
    attention_kwargs: model.attention_kwargs of config.json, or None when the
      run has no config.json (its settings are then unknown).
    seed: config.json's seed, or None.
    test_accuracy: test accuracy in %, of the checkpoint in `checkpoint`.
    checkpoint: 'best' or 'final': whose test accuracy this is ('final' when
      'best' was asked for but the run has no best checkpoint).
    config: config.json's content, or None.
  """

  workdir: pathlib.Path
  task: str
  attention: str
  protocol: str
  attention_kwargs: Mapping[str, Any] | None
  seed: int | None
  test_accuracy: float
  checkpoint: str
  config: Mapping[str, Any] | None


def _no_results_error(workdirs: Sequence[pathlib.Path]) -> errors.DataNotFoundError:
  missing = [str(w) for w in workdirs if not w.exists()]
  searched = ", ".join(str(w) for w in workdirs)
  problem = (f"{', '.join(missing)} do{'es' if len(missing) == 1 else ''} not exist"
             if missing else f"no {RESULTS_FILE} under {searched} (subdirectories searched)")
  return errors.DataNotFoundError(
      f"No results to report: {problem}. A training run writes {RESULTS_FILE} into its workdir "
      f"when it finishes (an unfinished one has only checkpoints): train with python -m "
      f"lra_jax.train --config=configs/lra.py:TASK,METHOD[,PROTOCOL] --workdir=DIR (or a sweep: "
      f"./run.sh sweep --tasks=... --methods=... --seeds=...), then pass those workdirs or a "
      f"directory above them.")


def find_runs(workdirs: Iterable[str | pathlib.Path], checkpoint: str = "best") -> list[RunResult]:
  """Every run whose results.json is in or under `workdirs` (or is one of them), sorted by path.

  Raises:
    errors.DataNotFoundError: none found (the message says how to make some).
    errors.ConfigError: a results.json or config.json that cannot be read.
  """
  if checkpoint not in CHECKPOINTS:
    raise errors.ConfigError(f"checkpoint must be one of {', '.join(CHECKPOINTS)}, "
                             f"got {checkpoint!r}.")
  workdirs = [pathlib.Path(w) for w in workdirs]
  paths = set()
  for workdir in workdirs:
    if workdir.name == RESULTS_FILE and workdir.is_file():
      paths.add(workdir)
    if (workdir / RESULTS_FILE).is_file():
      paths.add(workdir / RESULTS_FILE)
    if workdir.is_dir():
      paths.update(workdir.rglob(RESULTS_FILE))
  if not paths:
    raise _no_results_error(workdirs)
  return [_read_run(path, checkpoint) for path in sorted(paths)]


def _read_json(path: pathlib.Path) -> dict[str, Any]:
  try:
    return json.loads(path.read_text())
  except (OSError, ValueError) as error:
    raise errors.ConfigError(
        f"Cannot read {path} ({error}). Remove that file, or the workdir it is in, from the "
        f"directories given, or rerun the run to rewrite it.") from error


def _read_run(path: pathlib.Path, checkpoint: str) -> RunResult:
  report = _read_json(path)
  try:
    entry = report.get(checkpoint) or report["final"]
    which = checkpoint if checkpoint in report else "final"
    accuracy = 100.0 * float(entry["test"]["accuracy"])
    task, attention, protocol = report["task"], report["attention"], report["protocol"]
  except (KeyError, TypeError, ValueError) as error:
    raise errors.ConfigError(
        f"{path} is not a results.json of lra_jax.train (missing {error}). Remove it from the "
        f"directories given, or rerun that run to rewrite it.") from error
  config_path = path.parent / CONFIG_FILE
  config = _read_json(config_path) if config_path.is_file() else None
  kwargs = seed = None
  if config is not None:
    kwargs = dict(config.get("model", {}).get("attention_kwargs", {}))
    seed = config.get("seed")
  return RunResult(workdir=path.parent, task=task, attention=attention, protocol=protocol,
                   attention_kwargs=kwargs, seed=seed, test_accuracy=accuracy, checkpoint=which,
                   config=config)


# ------------------------------------------------------------------ grouping


@dataclasses.dataclass(frozen=True)
class Cell:
  """The runs of one group on one task: mean ± sample std of their test accuracy."""

  runs: tuple[RunResult, ...]

  @property
  def accuracies(self) -> list[float]:
    return [run.test_accuracy for run in self.runs]

  @property
  def mean(self) -> float:
    return statistics.fmean(self.accuracies)

  @property
  def std(self) -> float | None:
    """Sample standard deviation (n - 1); None for a single run."""
    return statistics.stdev(self.accuracies) if len(self.runs) > 1 else None


@dataclasses.dataclass(frozen=True)
class Group:
  """Runs of one method with one set of hyper-parameters under one protocol.

  Attributes:
    attention: registry name.
    protocol: 'official' or 'pytorch_lra'.
    attention_kwargs: the runs' model.attention_kwargs (None: unknown).
    cells: task -> Cell, for the tasks with runs.
  """

  attention: str
  protocol: str
  attention_kwargs: Mapping[str, Any] | None
  cells: Mapping[str, Cell]

  @property
  def seeds(self) -> list[Any]:
    seeds = {run.seed for cell in self.cells.values() for run in cell.runs}
    return sorted(seeds, key=lambda s: (s is None, s if isinstance(s, int) else 0, str(s)))

  def average(self) -> tuple[float | None, float | None]:
    """(mean of the five task means, sample std over seeds of the per-seed
    five-task averages); the mean is None unless every task has runs, the std
    None unless at least two seeds have runs on every task."""
    if any(task not in self.cells for task in published.TASKS):
      return None, None
    mean = statistics.fmean(self.cells[task].mean for task in published.TASKS)
    per_seed = collections.defaultdict(dict)
    for task in published.TASKS:
      by_seed = collections.defaultdict(list)
      for run in self.cells[task].runs:
        by_seed[run.seed].append(run.test_accuracy)
      for seed, values in by_seed.items():
        if seed is not None:
          per_seed[seed][task] = statistics.fmean(values)
    complete = [statistics.fmean(values.values()) for values in per_seed.values()
                if len(values) == len(published.TASKS)]
    return mean, (statistics.stdev(complete) if len(complete) > 1 else None)

  def published_matches(self, entries: Sequence[published.Entry]) -> list[published.Entry]:
    """Published rows with this group's method, protocol and defining settings
    (on at least one of its tasks)."""
    if self.attention_kwargs is None:
      return []
    return [entry for entry in entries
            if any(entry.matches(self.attention, self.protocol, self.attention_kwargs, task)
                   for task in self.cells)]


def _normalised(value: Any) -> Any:
  """JSON's view of a value (tuples as lists), so defaults compare with config.json."""
  return json.loads(json.dumps(value))


def group_runs(runs: Iterable[RunResult]) -> list[Group]:
  """Runs grouped by (attention, protocol, attention_kwargs), sorted."""
  grouped = collections.defaultdict(lambda: collections.defaultdict(list))
  for run in runs:
    kwargs_key = (None if run.attention_kwargs is None
                  else json.dumps(run.attention_kwargs, sort_keys=True))
    grouped[(run.protocol, run.attention, kwargs_key)][run.task].append(run)
  groups = []
  for (protocol, attention, kwargs_key), by_task in sorted(
      grouped.items(), key=lambda item: (item[0][0], item[0][1], item[0][2] or "")):
    kwargs = None if kwargs_key is None else json.loads(kwargs_key)
    cells = {task: Cell(tuple(sorted(by_task[task], key=lambda r: str(r.workdir))))
             for task in _task_order(by_task)}
    groups.append(Group(attention, protocol, kwargs, cells))
  return groups


def _task_order(tasks: Iterable[str]) -> list[str]:
  order = list(TASK_TITLES)
  return sorted(tasks, key=lambda t: (order.index(t) if t in order else len(order), t))


def _default_kwargs(attention: str) -> dict[str, Any] | None:
  """The registry's default hyper-parameters of `attention` (None if unknown)."""
  try:
    from lra_jax import attention as attention_lib  # jax and flax: only when needed

    return _normalised(attention_lib.default_hyperparameters(attention))
  except Exception:  # pylint: disable=broad-except  # unregistered: show every field
    return None


def settings_label(attention: str, attention_kwargs: Mapping[str, Any] | None) -> str:
  """The hyper-parameters that differ from the method's defaults, 'k=v, ...'."""
  if attention_kwargs is None:
    return "unknown (no config.json)"
  defaults = _default_kwargs(attention) or {}
  changed = {k: v for k, v in attention_kwargs.items() if k not in defaults or defaults[k] != v}
  return ", ".join(f"{k}={_format_value(v)}" for k, v in sorted(changed.items())) or "defaults"


def _format_value(value: Any) -> str:
  return json.dumps(value) if not isinstance(value, str) else value


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  """A nested dict (a config.json) as {'a.b.c': value}."""
  flat = {}
  for key, value in tree.items():
    if isinstance(value, Mapping):
      flat.update(flatten(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = value
  return flat


def differing_fields(runs: Sequence[RunResult]) -> list[str]:
  """Config fields that differ between `runs`, other than the seed and the
  data locations (*_dir): runs averaged together should differ only in their seed."""
  configs = [flatten(run.config) for run in runs if run.config is not None]
  if len(configs) < 2:
    return []
  keys = set().union(*configs)
  return sorted(k for k in keys
                if k != "seed" and not k.endswith("_dir")
                and len({json.dumps(c.get(k), sort_keys=True) for c in configs}) > 1)


# ------------------------------------------------------------------ tables


def _cell_text(mean: float | None, std: float | None, count: int | None = None) -> str:
  if mean is None:
    return "–"
  text = f"{mean:.2f}" + (f" ± {std:.2f}" if std is not None else "")
  return text + (f" ({count})" if count is not None else "")


def _published_text(value: float | str | None, std: float | None = None) -> str:
  if value is None:
    return "–"
  if isinstance(value, str):
    return value
  return f"{value:.2f}" + (f" ± {std:.2f}" if std is not None else "")


def _escape(text: str) -> str:
  return text.replace("|", "\\|")


def _header(tasks: Sequence[str]) -> list[str]:
  columns = ["method", "settings", *(TASK_TITLES.get(t, t) for t in tasks), "Avg", "seeds"]
  return ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]


def _published_row(entry: published.Entry, tasks: Sequence[str], indent: str = "↳ ") -> str:
  cells = [_published_text(entry.accuracy.get(task), entry.std.get(task)) for task in tasks]
  average = _published_text(entry.average)
  if entry.average is not None and entry.five_task_average is None:
    average += f" ({len(entry.average_over)} tasks)"
  label = f"{indent}{entry.method}"
  where = f"published: {entry.citation}"
  return "| " + " | ".join([_escape(label), _escape(where), *cells, average, ""]) + " |"


def markdown_report(runs: Sequence[RunResult], *, published_rows: str = "matching",
                    checkpoint: str = "best") -> str:
  """The Markdown report of `runs`: one table per protocol, published rows beside."""
  if published_rows not in PUBLISHED_CHOICES:
    raise errors.ConfigError(f"published must be one of {', '.join(PUBLISHED_CHOICES)}, "
                             f"got {published_rows!r}.")
  groups = group_runs(runs)
  tasks = list(published.TASKS)
  lines = [
      "# LRA results", "",
      f"Test accuracy (%) of the {'best-by-validation' if checkpoint == 'best' else 'final'} "
      f"checkpoint of each run (results.json \"{checkpoint}\"), mean ± sample std over runs "
      f"(their number in parentheses). Avg: mean of the five task means, ± the std over seeds "
      f"of the per-seed five-task averages where at least two seeds ran every task. Settings: "
      f"attention hyper-parameters that differ from the method's defaults. Rows marked ↳ are "
      f"published numbers of the same method, protocol and defining hyper-parameters "
      f"(lra_jax/published).", ""]
  notes = []
  for protocol in sorted({g.protocol for g in groups}):
    lines += [f"## Protocol `{protocol}`", ""] + _header(tasks)
    for group in (g for g in groups if g.protocol == protocol):
      cells = [(_cell_text(group.cells[t].mean, group.cells[t].std, len(group.cells[t].runs))
                if t in group.cells else "–") for t in tasks]
      mean, std = group.average()
      seeds = ", ".join("?" if s is None else str(s) for s in group.seeds)
      label = settings_label(group.attention, group.attention_kwargs)
      lines.append("| " + " | ".join([group.attention, _escape(label), *cells,
                                      _cell_text(mean, std), seeds]) + " |")
      if published_rows == "matching":
        lines += [_published_row(entry, tasks)
                  for entry in group.published_matches(published.entries())]
      for task, cell in group.cells.items():
        fields = differing_fields(cell.runs)
        if fields:
          notes.append(f"{group.attention} ({label}) on {task}: its {len(cell.runs)} runs also "
                       f"differ in {', '.join(fields)}.")
        fallback = [r for r in cell.runs if r.checkpoint != checkpoint]
        if fallback:
          notes.append(f"{group.attention} ({label}) on {task}: {len(fallback)} run(s) have no "
                       f"best checkpoint; their final test accuracy is used.")
        seeds = [r.seed for r in cell.runs if r.seed is not None]
        if len(seeds) != len(set(seeds)):
          notes.append(f"{group.attention} ({label}) on {task}: several runs share a seed "
                       f"({', '.join(str(r.workdir) for r in cell.runs)}).")
    lines.append("")
    if published_rows == "all":
      lines += [f"### Published, protocol `{protocol}`", ""] + _header(tasks)
      lines += [_published_row(entry, tasks, indent="")
                for entry in published.entries(protocol=protocol)]
      lines.append("")
  if notes:
    lines += ["Notes:", ""] + [f"* {note}" for note in notes] + [""]
  return "\n".join(lines).rstrip("\n") + "\n"


# ------------------------------------------------------------------ chart


def write_chart(runs: Sequence[RunResult], path: str | pathlib.Path, *,
                published_rows: str = "matching") -> pathlib.Path:
  """A PNG bar chart: test accuracy per task and the average, one panel per
  protocol; our groups as solid bars with std error bars, the published rows
  that match them hatched beside them in the same colour."""
  from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global state

  groups = group_runs(runs)
  protocols = sorted({g.protocol for g in groups})
  columns = list(published.TASKS) + ["average"]
  figure = Figure(figsize=(11, 4.2 * len(protocols)), layout="constrained")
  axes = figure.subplots(len(protocols), 1, squeeze=False)[:, 0]
  colours = [f"C{i}" for i in range(10)]
  for ax, protocol in zip(axes, protocols):
    series = []  # (label, values, errors, colour, hatched)
    for index, group in enumerate(g for g in groups if g.protocol == protocol):
      colour = colours[index % len(colours)]
      mean, std = group.average()
      values = [group.cells[t].mean if t in group.cells else math.nan for t in published.TASKS]
      spread = [(group.cells[t].std or 0.0) if t in group.cells else 0.0 for t in published.TASKS]
      label = settings_label(group.attention, group.attention_kwargs)
      name = group.attention + ("" if label == "defaults" else f" ({label})")
      series.append((name, values + [math.nan if mean is None else mean],
                     spread + [std or 0.0], colour, False))
      if published_rows != "none":
        for entry in group.published_matches(published.entries()):
          values = [entry.accuracy.get(t) for t in published.TASKS] + [entry.five_task_average]
          values = [v if isinstance(v, (int, float)) else math.nan for v in values]
          spread = ([entry.std.get(t, 0.0) for t in published.TASKS] + [0.0]) if entry.std else None
          series.append((f"{entry.method} ({entry.citation})", values, spread, colour, True))
    width = 0.8 / max(len(series), 1)
    for position, (label, values, spread, colour, hatched) in enumerate(series):
      xs = [i - 0.4 + width * (position + 0.5) for i in range(len(columns))]
      ax.bar(xs, values, width, yerr=spread, label=label, color=colour,
             alpha=0.45 if hatched else 0.9, hatch="//" if hatched else None,
             edgecolor=colour, capsize=2)
    ax.set_xticks(range(len(columns)),
                  [TASK_TITLES.get(c, "Avg" if c == "average" else c) for c in columns])
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"protocol {protocol}: ours solid (± std over seeds), published hatched")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  figure.savefig(path, dpi=110)
  return path


# ------------------------------------------------------------------ command line


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="python -m lra_jax.results",
      description="LRA table (Markdown on stdout, --out file, PNG chart) of the training runs "
                  "under WORKDIRs, beside the published numbers.")
  parser.add_argument("workdirs", nargs="+", metavar="WORKDIR",
                      help="run workdirs, or directories above them (searched for results.json)")
  parser.add_argument("--out", help="also write the Markdown to this file")
  parser.add_argument("--png", help="bar chart path (default: --out with .png, else "
                                    "WORKDIR/lra_results.png for the first WORKDIR)")
  parser.add_argument("--no_png", action="store_true", help="write no chart")
  parser.add_argument("--checkpoint", choices=CHECKPOINTS, default="best",
                      help="whose test accuracy: the best-by-validation checkpoint (default; "
                           "'final' if a run has none) or the final one")
  parser.add_argument("--published", choices=PUBLISHED_CHOICES, default="matching",
                      help="published rows: beside matching runs (default), also every row of "
                           "the runs' protocols, or none")
  return parser


def main(argv: Sequence[str] | None = None) -> int:
  args = _parser().parse_args(argv)
  try:
    runs = find_runs(args.workdirs, args.checkpoint)
  except (errors.ConfigError, errors.DataNotFoundError) as error:
    print(f"error: {error}", file=sys.stderr)
    return 2
  report = markdown_report(runs, published_rows=args.published, checkpoint=args.checkpoint)
  print(report, end="")
  if args.out:
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report)
    print(f"Wrote {out}", file=sys.stderr)
  if not args.no_png:
    png = args.png or (pathlib.Path(args.out).with_suffix(".png") if args.out
                       else pathlib.Path(args.workdirs[0]) / "lra_results.png")
    print(f"Wrote {write_chart(runs, png, published_rows=args.published)}", file=sys.stderr)
  return 0


if __name__ == "__main__":
  sys.exit(main())
