"""orbax checkpoints of a run: the latest ones (resume) and the best by validation.

Layout under the workdir: `checkpoints/<step>/` (the last few, for resuming)
and `best/<step>/` (one, the highest validation accuracy so far). Each holds
the train state and a small JSON of run bookkeeping (best step and accuracy),
so a resumed run knows what it has to beat.
"""

from __future__ import annotations

import pathlib
from typing import Any

import jax
import orbax.checkpoint as ocp


class Checkpoints:
  """The two checkpoint managers of a workdir."""

  def __init__(self, workdir: str | pathlib.Path, *, save_interval_steps: int, max_to_keep: int):
    workdir = pathlib.Path(workdir).absolute()
    policies = ocp.checkpoint_managers
    # On the interval and on preemption; not orbax's default extra save of
    # the first step, which only costs time.
    save_policy = policies.AnySavePolicy([policies.FixedIntervalPolicy(save_interval_steps),
                                          policies.PreemptionCheckpointingPolicy()])
    self.latest = ocp.CheckpointManager(
        workdir / "checkpoints",
        options=ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, save_decision_policy=save_policy, create=True))
    self.best = ocp.CheckpointManager(
        workdir / "best", options=ocp.CheckpointManagerOptions(max_to_keep=1, create=True))

  @staticmethod
  def _save_args(state, meta: dict[str, Any]) -> ocp.args.Composite:
    # A step that failed on the device (out of memory, say) raises here, in
    # the caller's thread, rather than inside orbax's background writer,
    # which then blocks interpreter exit for minutes.
    jax.block_until_ready(state)
    return ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))

  @staticmethod
  def _restore(manager: ocp.CheckpointManager, abstract_state) -> tuple[Any, dict[str, Any]] | None:
    step = manager.latest_step()
    if step is None:
      return None
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
    return restored.state, dict(restored.meta)

  def restore_latest(self, abstract_state) -> tuple[Any, dict[str, Any]] | None:
    """(state, meta) of the newest checkpoint, or None in a fresh workdir."""
    return self._restore(self.latest, abstract_state)

  def restore_best(self, abstract_state) -> tuple[Any, dict[str, Any]] | None:
    return self._restore(self.best, abstract_state)

  def save(self, step: int, state, meta: dict[str, Any], *, force: bool = False) -> bool:
    """Saves when `step` is on the interval, on preemption, or when forced."""
    if not (force or self.latest.should_save(step)):
      return False
    return self.latest.save(step, args=self._save_args(state, meta), force=force)

  def save_best(self, step: int, state, meta: dict[str, Any]) -> None:
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
