"""orbax checkpoints of a run: the latest ones (resume) and the best by validation.

Layout under the workdir: `checkpoints/<step>/` (the last few, for resuming)
and `best/<step>/` (one, the highest validation accuracy so far). Each holds
the train state and a small JSON of run bookkeeping (best step and accuracy),
so a resumed run knows what it has to beat.

orbax writes each step into a temporary directory and renames it when done,
so a crash mid-save leaves no half-written step behind (the temporary
directory is removed by the next run). A committed step can still be
unreadable (a disk fault, a truncated copy): restoring then warns and falls
back to the next older step, and, when asked, moves the unreadable ones to
`corrupt_checkpoints/` so that the resumed run can write those steps afresh.
Nothing is deleted except by orbax's own rotation of superseded steps.
"""

from __future__ import annotations

import pathlib
import time
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging

from lra_jax import errors

CORRUPT_DIR = "corrupt_checkpoints"


class Checkpoints:
  """The two checkpoint managers of a workdir."""

  def __init__(self, workdir: str | pathlib.Path, *, save_interval_steps: int, max_to_keep: int):
    workdir = pathlib.Path(workdir).absolute()
    self.workdir = workdir
    policies = ocp.checkpoint_managers
    # On the interval and on preemption; not orbax's default extra save of
    # the first step, which only costs time.
    save_policy = policies.AnySavePolicy([policies.FixedIntervalPolicy(save_interval_steps),
                                          policies.PreemptionCheckpointingPolicy()])
    self.latest = ocp.CheckpointManager(
        workdir / "checkpoints",
        options=ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, save_decision_policy=save_policy, create=True,
            cleanup_tmp_directories=True))
    self.best = ocp.CheckpointManager(
        workdir / "best", options=ocp.CheckpointManagerOptions(
            max_to_keep=1, create=True, cleanup_tmp_directories=True))

  @staticmethod
  def _save_args(state, meta: dict[str, Any]) -> ocp.args.Composite:
    # A step that failed on the device (out of memory, say) raises here, in
    # the caller's thread, rather than inside orbax's background writer,
    # which then blocks interpreter exit for minutes.
    jax.block_until_ready(state)
    return ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))

  def _restore(self, manager: ocp.CheckpointManager, abstract_state, *,
               set_aside: bool = False) -> tuple[Any, dict[str, Any]] | None:
    """(state, meta) of the newest readable step of `manager`, or None if it has none.

    Unreadable steps are skipped with a warning; with `set_aside` they are
    moved to corrupt_checkpoints/ once an older step has been read (so the
    run can save those steps again). If steps exist but none is readable,
    raises rather than silently starting afresh.
    """
    failed: list[tuple[int, Exception]] = []
    for step in sorted(manager.all_steps(), reverse=True):
      try:
        restored = manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
      except Exception as error:  # noqa: BLE001 - any read failure means "try an older one"
        logging.warning("Checkpoint step %d in %s is unreadable and is not used (%s: %s); "
                        "falling back to the previous checkpoint.", step, manager.directory,
                        type(error).__name__, _first_line(error))
        failed.append((step, error))
        continue
      if failed and set_aside:
        self._set_aside(manager, [bad for bad, _ in failed])
      return restored.state, dict(restored.meta)
    if failed:
      step, error = failed[-1]
      raise errors.DataNotFoundError(
          f"No checkpoint in {manager.directory} could be read (steps "
          f"{sorted(bad for bad, _ in failed)}; the oldest failed with {type(error).__name__}: "
          f"{_first_line(error)}). Nothing was changed: move that directory away to train from "
          f"scratch, or pass a new --workdir.")
    return None

  def _set_aside(self, manager: ocp.CheckpointManager, bad_steps: list[int]) -> None:
    """Moves unreadable steps out of the manager's directory (kept for inspection)."""
    if jax.process_index() == 0:
      target = self.workdir / CORRUPT_DIR
      target.mkdir(exist_ok=True)
      for step in bad_steps:
        source = pathlib.Path(manager.directory) / str(step)
        destination = target / f"{pathlib.Path(manager.directory).name}_{step}_{int(time.time())}"
        source.rename(destination)
        logging.warning("Moved the unreadable checkpoint step %d to %s.", step, destination)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices("lra_jax_set_aside_corrupt_checkpoints")
    manager.reload()

  def restore_latest(self, abstract_state, *, set_aside_unreadable: bool = False
                     ) -> tuple[Any, dict[str, Any]] | None:
    """(state, meta) of the newest readable checkpoint, or None in a fresh workdir.

    `set_aside_unreadable`: a run that resumes (and will save the same steps
    again) moves newer unreadable steps to corrupt_checkpoints/.
    """
    return self._restore(self.latest, abstract_state, set_aside=set_aside_unreadable)

  def restore_best(self, abstract_state) -> tuple[Any, dict[str, Any]] | None:
    """(state, meta) of the best-by-validation checkpoint; None if absent or unreadable."""
    try:
      return self._restore(self.best, abstract_state)
    except errors.DataNotFoundError as error:
      logging.warning("No best-by-validation checkpoint is used: %s", error)
      return None

  def due(self, step: int) -> bool:
    """Whether save(step) would save without `force` (interval or preemption)."""
    return self.latest.should_save(step)

  def save(self, step: int, state, meta: dict[str, Any], *, force: bool = False) -> bool:
    """Saves when `step` is on the interval, on preemption, or when forced."""
    if not (force or self.latest.should_save(step)):
      return False
    return self.latest.save(step, args=self._save_args(state, meta), force=force)

  def save_best(self, step: int, state, meta: dict[str, Any]) -> None:
    # A run killed after saving the best but before the latest checkpoint of
    # a step reaches that step again on resume, with the same state (training
    # is a function of the seed and the step): the saved one stands.
    if step in self.best.all_steps():
      return
    self.best.save(step, args=self._save_args(state, meta), force=True)

  def reached_preemption(self, step: int) -> bool:
    return self.latest.reached_preemption(step)

  def wait_until_finished(self) -> None:
    """Blocks until every asynchronous save has been written."""
    for manager in (self.latest, self.best):
      manager.wait_until_finished()

  def close(self) -> None:
    """Waits for pending saves, then releases the managers."""
    self.wait_until_finished()
    for manager in (self.latest, self.best):
      manager.close()


def _first_line(error: BaseException) -> str:
  text = str(error).strip()
  return text.splitlines()[0] if text else repr(error)
