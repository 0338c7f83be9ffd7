"""PNG plots of a benchmark run: time and memory against length, error against features.

All take the run's JSON payload (`suite.payload`), so they can be redrawn
from a saved file. matplotlib runs with the Agg backend (no display needed).
"""

from __future__ import annotations

import itertools
import pathlib
from typing import Any, Mapping

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)

# Enough distinct styles for ~30 cases: colours cycle fastest, then markers
# and line styles, so no two curves look alike.
_COLOURS = plt.get_cmap("tab10").colors
_MARKERS = "os^vDP*X"
_LINES = ("-", "--", ":", "-.")
_BARS = {"softmax": {"color": "black", "marker": "o", "linestyle": "-", "linewidth": 2.5},
         "sdpa_cudnn": {"color": "black", "marker": "s", "linestyle": "--", "linewidth": 2.5}}


def _styles(data: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
  """{case label: line style}, by the case's position, so a method looks the same in every plot."""
  styles = ({"color": colour, "marker": marker, "linestyle": line}
            for line, marker in itertools.product(_LINES, _MARKERS) for colour in _COLOURS)
  labels = [c["label"] for c in data["cases"] if c["label"] not in _BARS]
  found = dict(zip(labels, styles))
  # The exact-softmax bars every method is compared with stand out.
  found.update({label: style for label, style in _BARS.items()})
  return found


def _series(data: Mapping[str, Any], dtype: str, mode: str, field: str):
  by_name: dict[str, list[tuple[int, float]]] = {}
  for t in data["timings"]:
    if t["dtype"] == dtype and t["mode"] == mode and t.get(field) is not None:
      by_name.setdefault(t["name"], []).append((t["length"], t[field]))
  order = [c["label"] for c in data["cases"]]
  return [(name, sorted(by_name[name])) for name in order if name in by_name]


def _against_length(data: Mapping[str, Any], path: pathlib.Path, field: str, ylabel: str,
                    scale: float, mode: str = "forward_backward") -> pathlib.Path | None:
  dtypes = [d for d in data["settings"]["dtypes"]
            if any(t["dtype"] == d and t["mode"] == mode for t in data["timings"])]
  if not dtypes:
    return None
  figure, axes = plt.subplots(1, len(dtypes), figsize=(7 * len(dtypes), 6), squeeze=False)
  for axis, dtype in zip(axes[0], dtypes):
    styles = _styles(data)
    for name, points in _series(data, dtype, mode, field):
      lengths, values = zip(*points)
      axis.plot(lengths, [v * scale for v in values], label=name, markersize=4,
                **styles.get(name, {}))
    axis.set_xscale("log", base=2)
    axis.set_yscale("log")
    axis.set_xlabel("sequence length")
    axis.set_ylabel(ylabel)
    axis.set_title(f"{dtype}, {mode.replace('_', '+')}")
    axis.grid(True, which="both", alpha=0.3)
  axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
  figure.tight_layout()
  figure.savefig(path, dpi=110)
  plt.close(figure)
  return path


def time_plot(data: Mapping[str, Any], path: str | pathlib.Path) -> pathlib.Path | None:
  """Forward+backward median time against length, log-log, one panel per dtype."""
  return _against_length(data, pathlib.Path(path), "median_ms", "time (ms)", 1.0)


def memory_plot(data: Mapping[str, Any], path: str | pathlib.Path) -> pathlib.Path | None:
  """Forward+backward peak memory (XLA's accounting) against length, log-log."""
  return _against_length(data, pathlib.Path(path), "peak_bytes", "peak memory (MiB)", 2.0 ** -20)


def error_plot(data: Mapping[str, Any], path: str | pathlib.Path) -> pathlib.Path | None:
  """Output error against the size knob (features / landmarks), log-log, one curve per method."""
  sweep = data.get("sweep") or []
  if not sweep:
    return None
  figure, axis = plt.subplots(figsize=(8, 6))
  styles = _styles(data)
  for name in dict.fromkeys(row["name"] for row in sweep):
    rows = sorted((r for r in sweep if r["name"] == name), key=lambda r: r["value"])
    label = f"{name} ({rows[0]['knob']}) vs {rows[0]['reference']}"
    axis.errorbar([r["value"] for r in rows], [r["mean"] for r in rows],
                  yerr=[r["std"] for r in rows], label=label, capsize=3, markersize=4,
                  **styles.get(name, {}))
  axis.set_xscale("log", base=2)
  axis.set_yscale("log")
  axis.set_xlabel("number of features / landmarks / projected length")
  axis.set_ylabel("relative Frobenius error of the output")
  settings = data["settings"]
  axis.set_title(f"float32, length {settings['error_length']}, q, k, v ~ "
                 f"N(0, {settings['error_input_scale']:g}^2)")
  axis.grid(True, which="both", alpha=0.3)
  axis.legend(fontsize=8)
  figure.tight_layout()
  figure.savefig(path, dpi=110)
  plt.close(figure)
  return pathlib.Path(path)


def all_plots(data: Mapping[str, Any], directory: str | pathlib.Path, stem: str) -> dict[str, str]:
  """Draws every plot as `directory/stem_<kind>.png`; {title: file name} of those drawn."""
  directory = pathlib.Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  drawn = {}
  for title, kind, draw in (("time against length", "time", time_plot),
                            ("memory against length", "memory", memory_plot),
                            ("error against features", "error", error_plot)):
    path = draw(data, directory / f"{stem}_{kind}.png")
    if path is not None:
      drawn[title] = path.name
  return drawn
