"""Human-readable summaries of a run's results.json."""

from __future__ import annotations

import pathlib
from typing import Any


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
