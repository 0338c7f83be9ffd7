"""Sweeps: one training run per (task, method, seed), one after another, resumable.

    ./run.sh sweep --tasks=listops,text --methods=softmax,skyformer --seeds=0,1,2
    python -m lra_jax.sweep --tasks=listops --methods=softmax,nystrom --seeds=0,1 \
        --protocol=pytorch_lra --root=runs/sweep --config.train.num_train_steps=2000

Each run trains `configs/lra.py:TASK,METHOD,PROTOCOL` with `--config.seed=SEED`
and the extra `--config.x=y` overrides, through `python -m lra_jax.train`, in
its own workdir ROOT/TASK_METHOD_PROTOCOL_seedSEED. Rerunning the same command
skips the runs that finished (their workdir holds results.json) and resumes
the unfinished ones from their latest checkpoint (the trainer resumes by
itself; an interrupted sweep loses at most the steps since that checkpoint).
At the end it prints the `lra_jax.results` table of everything under ROOT and
writes it to ROOT/lra_results.md and ROOT/lra_results.png.

Before anything trains, every run's config is built and checked (unknown
tasks, methods or fields stop the sweep with what to change), and a workdir
whose config.json differs from what this sweep would train there (other
overrides, say) stops it too: one ROOT holds one set of settings.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import re
import signal
import subprocess
import sys
import warnings
from typing import Any, Sequence

from lra_jax import errors, results

DEFAULT_ROOT = "runs/sweep"
START, RESUME, SKIP = "start", "resume", "skip"
_REPO_CONFIG = pathlib.Path(__file__).resolve().parents[1] / "configs" / "lra.py"


@dataclasses.dataclass(frozen=True)
class PlannedRun:
  """One run of a sweep and what the sweep will do with it.

  Attributes:
    task, method, protocol, seed: what it trains.
    workdir: its workdir.
    action: 'start' (nothing trained yet), 'resume' (checkpoints but no
      results.json) or 'skip' (results.json: finished).
    step: the latest checkpointed step ('resume'), else None.
  """

  task: str
  method: str
  protocol: str
  seed: int
  workdir: pathlib.Path
  action: str
  step: int | None = None

  def describe(self) -> str:
    what = {START: "start", RESUME: f"resume from step {self.step}",
            SKIP: "skip (finished: results.json)"}[self.action]
    return f"{self.task:10s} {self.method:18s} seed {self.seed:<3d} {what:34s} {self.workdir}"


def workdir_for(root: str | pathlib.Path, task: str, method: str, protocol: str,
                seed: int) -> pathlib.Path:
  """ROOT/TASK_METHOD_PROTOCOL_seedSEED."""
  return pathlib.Path(root) / f"{task}_{method}_{protocol}_seed{seed}"


def latest_checkpoint_step(workdir: pathlib.Path) -> int | None:
  """The newest committed step under workdir/checkpoints (orbax's temporary
  directories of an unfinished save are not steps), or None."""
  steps = [int(p.name) for p in (workdir / "checkpoints").glob("*")
           if p.is_dir() and p.name.isdigit()]
  return max(steps) if steps else None


def find_config_file(config_file: str | pathlib.Path | None = None) -> pathlib.Path:
  """configs/lra.py: the given path, else ./configs/lra.py, else the repository's."""
  candidates = ([pathlib.Path(config_file)] if config_file
                else [pathlib.Path("configs/lra.py"), _REPO_CONFIG])
  for candidate in candidates:
    if candidate.is_file():
      return candidate.resolve()
  raise errors.ConfigError(
      f"The sweep trains configs/lra.py:TASK,METHOD,PROTOCOL but {candidates[0]} does not exist. "
      f"Run it from the repository root (./run.sh sweep ... does), or pass "
      f"--config_file=PATH/TO/configs/lra.py.")


def build_config(config_file: pathlib.Path, task: str, method: str, protocol: str, seed: int,
                 overrides: Sequence[str]):
  """The config `python -m lra_jax.train` will train for this run (same parser).

  Raises:
    errors.ConfigError: an unknown task, method or protocol, a field the
      config lacks, or a value of the wrong type; the message says which.
  """
  from absl import flags
  from ml_collections import config_flags

  argv = ["lra_jax.sweep", f"--config={config_file}:{task},{method},{protocol}",
          f"--config.seed={seed}", *overrides]
  # A private FlagValues: the sweep defines no global flags (lra_jax.train owns them).
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "Config file.", flag_values=flag_values,
                                  lock_config=True, sys_argv=argv)
  try:
    with warnings.catch_warnings():
      # ml_collections loads config files with the deprecated load_module().
      warnings.simplefilter("ignore", DeprecationWarning)
      flag_values(argv)
    return flag_values.config
  except (flags.Error, KeyError, AttributeError, ValueError) as error:
    config_error = errors.innermost_config_error(error)
    if config_error is not None:
      raise errors.ConfigError(str(config_error)) from error
    message = str(error).strip().strip("'\"").replace("\\n", " ")
    raise errors.ConfigError(
        f"{task},{method},{protocol}: the overrides {' '.join(overrides) or '(none)'} do not fit "
        f"the config: {message}. Every field is documented in lra_jax/base_config.py "
        f"(attention_kwargs: in the method's module).") from error


def _config_differences(stored: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
  """'field: A there, B here' for each field that differs, data locations (*_dir) aside."""
  flat_stored, flat_wanted = results.flatten(stored), results.flatten(wanted)
  lines = []
  for key in sorted(set(flat_stored) | set(flat_wanted)):
    if key.endswith("_dir"):
      continue
    there, here = flat_stored.get(key, "(absent)"), flat_wanted.get(key, "(absent)")
    if json.dumps(there, sort_keys=True) != json.dumps(here, sort_keys=True):
      lines.append(f"{key}: {json.dumps(there)} there, {json.dumps(here)} here")
  return lines


def plan(*, root: str | pathlib.Path, tasks: Sequence[str], methods: Sequence[str],
         seeds: Sequence[int], protocol: str = "official", overrides: Sequence[str] = (),
         config_file: str | pathlib.Path | None = None) -> list[PlannedRun]:
  """What a sweep will do, run by run (tasks outermost, seeds innermost); trains nothing.

  Every run's config is built (so bad names and overrides fail here, before
  any training) and compared with the config.json of its workdir, if any.

  Raises:
    errors.ConfigError: a config that cannot be built, or a workdir that holds
      a run with other settings (the message lists them).
  """
  config_file = find_config_file(config_file)
  planned = []
  for task in tasks:
    for method in methods:
      for seed in seeds:
        config = build_config(config_file, task, method, protocol, seed, overrides)
        workdir = workdir_for(root, task, method, protocol, seed)
        stored_path = workdir / results.CONFIG_FILE
        if stored_path.is_file():
          wanted = json.loads(json.dumps(config.to_dict()))  # as the trainer writes it
          differences = _config_differences(json.loads(stored_path.read_text()), wanted)
          if differences:
            raise errors.ConfigError(
                f"{workdir} holds a run with other settings than this sweep would train there "
                f"({'; '.join(differences[:5])}{'; ...' if len(differences) > 5 else ''}). "
                f"Nothing was trained. Use another --root for these settings, or repeat the "
                f"--config overrides that run was started with.")
        if (workdir / results.RESULTS_FILE).is_file():
          planned.append(PlannedRun(task, method, protocol, seed, workdir, SKIP))
        else:
          step = latest_checkpoint_step(workdir)
          planned.append(PlannedRun(task, method, protocol, seed, workdir,
                                    START if step is None else RESUME, step))
  return planned


def train_command(run: PlannedRun, config_file: pathlib.Path,
                  overrides: Sequence[str]) -> list[str]:
  """The `python -m lra_jax.train` command line of one run."""
  return [sys.executable, "-m", "lra_jax.train",
          f"--config={config_file}:{run.task},{run.method},{run.protocol}",
          f"--workdir={run.workdir}", f"--config.seed={run.seed}", *overrides]


class _ForwardSigterm:
  """SIGTERM to the sweep goes on to the run in progress (which checkpoints and
  stops) and ends the sweep after it; the previous handler is put back on exit."""

  def __init__(self):
    self.child: subprocess.Popen | None = None
    self.received = False
    self._previous = None

  def _handle(self, signum, frame) -> None:
    del frame
    self.received = True
    if self.child is not None and self.child.poll() is None:
      self.child.send_signal(signum)

  def __enter__(self) -> _ForwardSigterm:
    self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def __exit__(self, *exc_info) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL if self._previous is None else self._previous)


def run_sweep(planned: Sequence[PlannedRun], config_file: str | pathlib.Path | None = None,
              overrides: Sequence[str] = (), *, log=print) -> list[PlannedRun]:
  """Trains the runs to start or resume, one at a time; returns the ones that failed.

  A failing run (non-zero exit) is reported and the sweep goes on with the
  next; SIGTERM or Ctrl-C stops the sweep after the run in progress has
  checkpointed (rerun the command to continue).
  """
  config_file = find_config_file(config_file)
  todo = [run for run in planned if run.action != SKIP]
  failed = []
  with _ForwardSigterm() as sigterm:
    for index, run in enumerate(todo, 1):
      if sigterm.received:
        break
      log(f"[sweep {index}/{len(todo)}] {run.describe()}")
      sigterm.child = subprocess.Popen(train_command(run, config_file, overrides))
      try:
        returncode = sigterm.child.wait()
      except KeyboardInterrupt:
        # The run got the same Ctrl-C (same process group) and checkpoints.
        sigterm.child.wait()
        raise
      if sigterm.received:
        log("[sweep] stopped by SIGTERM (the run in progress checkpointed first); rerun the "
            "same command to resume.")
        break
      if returncode != 0:
        log(f"[sweep] {run.workdir}: training exited with status {returncode}; going on with "
            f"the next run (its output is above; rerunning the sweep retries it).")
        failed.append(run)
  return failed


def _parse_list(text: str, name: str, convert=str) -> list[Any]:
  items = [item.strip() for item in text.split(",") if item.strip()]
  if not items:
    raise errors.ConfigError(f"--{name} is empty; give a comma-separated list, e.g. "
                             f"--{name}={'0,1,2' if name == 'seeds' else 'listops,text'}.")
  try:
    return [convert(item) for item in items]
  except ValueError:
    raise errors.ConfigError(f"--{name}={text}: every item must be an integer, e.g. "
                             f"--seeds=0,1,2.") from None


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="python -m lra_jax.sweep",
      description="Train one workdir per (task, method, seed), skipping finished runs and "
                  "resuming unfinished ones; extra --config.FIELD=VALUE overrides apply to "
                  "every run.")
  parser.add_argument("--tasks", required=True, help="comma-separated: listops,text,retrieval,"
                                                     "image,pathfinder")
  parser.add_argument("--methods", required=True,
                      help="comma-separated names from lra_jax.attention.names()")
  parser.add_argument("--seeds", default="0", help="comma-separated integers (default 0)")
  parser.add_argument("--protocol", default="official", help="official (default) or pytorch_lra")
  parser.add_argument("--root", default=DEFAULT_ROOT,
                      help=f"directory of the run workdirs (default {DEFAULT_ROOT})")
  parser.add_argument("--config_file", help="configs/lra.py (default: found from the "
                                            "current directory or the repository)")
  parser.add_argument("--dry_run", action="store_true",
                      help="print the plan (start / resume / skip per run) and train nothing")
  return parser


def main(argv: Sequence[str] | None = None) -> int:
  parser = _parser()
  args, rest = parser.parse_known_args(argv)
  unknown = [arg for arg in rest if not re.match(r"--?(no)?config\.", arg)]
  if unknown:
    parser.error(f"unrecognised arguments {' '.join(unknown)}: besides its own flags the sweep "
                 f"takes only --config.FIELD=VALUE overrides (passed to every run)")
  try:
    planned = plan(root=args.root, tasks=_parse_list(args.tasks, "tasks"),
                   methods=_parse_list(args.methods, "methods"),
                   seeds=_parse_list(args.seeds, "seeds", int), protocol=args.protocol,
                   overrides=rest, config_file=args.config_file)
  except errors.ConfigError as error:
    print(f"error: {error}", file=sys.stderr)
    return 2
  counts = {action: sum(r.action == action for r in planned) for action in (START, RESUME, SKIP)}
  print(f"[sweep] {len(planned)} runs in {args.root}: {counts[START]} to start, "
        f"{counts[RESUME]} to resume, {counts[SKIP]} finished.")
  for run in planned:
    print(f"  {run.describe()}")
  if args.dry_run:
    return 0
  sys.stdout.flush()
  try:
    failed = run_sweep(planned, args.config_file, rest)
  except KeyboardInterrupt:
    print("\n[sweep] interrupted; rerun the same command to resume.", file=sys.stderr)
    return 130
  root = pathlib.Path(args.root)
  status = 1 if failed else 0
  try:
    runs = results.find_runs([root])
  except (errors.ConfigError, errors.DataNotFoundError) as error:
    print(f"error: {error}", file=sys.stderr)
    return status or 2
  report = results.markdown_report(runs)
  print(report, end="")
  (root / "lra_results.md").write_text(report)
  chart = results.write_chart(runs, root / "lra_results.png")
  print(f"[sweep] wrote {root / 'lra_results.md'} and {chart}.")
  if failed:
    print(f"[sweep] {len(failed)} run(s) failed: {', '.join(str(r.workdir) for r in failed)}; "
          f"rerun the same command to retry them.", file=sys.stderr)
  return status


if __name__ == "__main__":
  sys.exit(main())
