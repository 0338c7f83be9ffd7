"""Tables of a benchmark run: scaling exponents, speed-ups and memory ratios, Markdown, JSON.

Everything here is a pure function of measurements (Timing records or the
run's JSON payload), so the report can be rebuilt from a saved JSON file.
"""

from __future__ import annotations

import json
import math
import pathlib
from typing import Any, Callable, Iterable, Mapping, Sequence

from lra_jax.benchmark.timing import Timing

# Softmax is capped by --max_quadratic_length on CPU; beyond its longest
# measured length its time and memory are extrapolated with this exponent
# (the O(n^2) of its n x n logits; measured exponents are a little above it,
# so the extrapolated speed-ups are conservative).
QUADRATIC_EXPONENT = 2.0


def scaling_ratio(timings: Sequence[Timing], name: str, short: int, long: int) -> float | None:
  """time(long) / time(short) for `name`; linear scaling gives long / short."""
  by_length = {t.length: t.median_ms for t in timings if t.name == name}
  if short not in by_length or long not in by_length:
    return None
  return by_length[long] / by_length[short]


def scaling_exponent(timings: Sequence[Timing], name: str, short: int, long: int) -> float | None:
  """The exponent a of time ~ length^a: log(t_long / t_short) / log(long / short).

  From 4096 to 16384 this is log2(t16384 / t4096) / 2: 1 for linear cost, 2
  for quadratic.
  """
  ratio = scaling_ratio(timings, name, short, long)
  if ratio is None or ratio <= 0:
    return None
  return math.log(ratio) / math.log(long / short)


def exponent_lengths(lengths: Iterable[int], short: int = 4096, long: int = 16384,
                     ) -> tuple[int, int] | None:
  """(short, long) to fit the exponent on: 4096 and 16384 when both ran, else the extremes."""
  lengths = sorted(set(lengths))
  if short in lengths and long in lengths:
    return short, long
  if len(lengths) < 2:
    return None
  return lengths[0], lengths[-1]


def baseline_value(timings: Sequence[Timing], baseline: str, length: int,
                   value: Callable[[Timing], float | None]) -> tuple[float | None, bool]:
  """`value` of `baseline` at `length`, and whether it is extrapolated.

  Beyond the baseline's longest measured length the value is extrapolated
  with `QUADRATIC_EXPONENT` from that length (the baseline is exact softmax,
  capped by --max_quadratic_length).
  """
  measured = {t.length: value(t) for t in timings if t.name == baseline and value(t) is not None}
  if length in measured:
    return measured[length], False
  below = [n for n in measured if n < length]
  if not below:
    return None, False
  longest = max(below)
  return measured[longest] * (length / longest) ** QUADRATIC_EXPONENT, True


def ratios_to_baseline(timings: Sequence[Timing], baseline: str,
                       value: Callable[[Timing], float | None], *, invert: bool = False,
                       extrapolate: bool = True) -> dict[tuple[str, int], tuple[float, bool]]:
  """{(name, length): (value / baseline's value, extrapolated)}; `invert` gives baseline / value.

  With `invert` and the median time this is the speed-up over the baseline;
  without, and the peak memory, the memory ratio.
  """
  ratios = {}
  for t in timings:
    mine = value(t)
    theirs, estimated = baseline_value(timings, baseline, t.length, value)
    if mine is None or theirs is None or mine <= 0 or theirs <= 0 or (estimated and not extrapolate):
      continue
    ratios[(t.name, t.length)] = ((theirs / mine) if invert else (mine / theirs), estimated)
  return ratios


def speedups(timings: Sequence[Timing], baseline: str = "softmax", **kwargs
             ) -> dict[tuple[str, int], tuple[float, bool]]:
  """{(name, length): (baseline time / time, extrapolated)} (same mode and dtype assumed)."""
  return ratios_to_baseline(timings, baseline, lambda t: t.median_ms, invert=True, **kwargs)


def memory_ratios(timings: Sequence[Timing], baseline: str = "softmax", **kwargs
                  ) -> dict[tuple[str, int], tuple[float, bool]]:
  """{(name, length): (peak bytes / baseline's peak bytes, extrapolated)}."""
  return ratios_to_baseline(timings, baseline, lambda t: t.peak_bytes, **kwargs)


def markdown_table(timings: Sequence[Timing], value: Callable[[Timing], str]) -> str:
  """Rows = lengths, columns = names (in first-seen order), cells = value(timing)."""
  names = list(dict.fromkeys(t.name for t in timings))
  lengths = sorted({t.length for t in timings})
  cells = {(t.name, t.length): value(t) for t in timings}
  lines = ["| length | " + " | ".join(names) + " |",
           "| --- | " + " | ".join("---" for _ in names) + " |"]
  for length in lengths:
    lines.append(f"| {length} | " + " | ".join(cells.get((n, length), "–") for n in names) + " |")
  return "\n".join(lines)


def grid(rows: Sequence[str], columns: Sequence[Any], cells: Mapping[tuple[str, Any], str],
         first: str = "method", extra: Mapping[str, Mapping[str, str]] | None = None) -> str:
  """Markdown table: one row per `rows` entry, one column per `columns`, then the `extra` columns.

  `extra` maps a column title to {row: cell}. Missing cells are '–'.
  """
  extra = extra or {}
  titles = [str(c) for c in columns] + list(extra)
  lines = [f"| {first} | " + " | ".join(titles) + " |",
           "| --- | " + " | ".join("---:" for _ in titles) + " |"]
  for row in rows:
    values = [cells.get((row, c), "–") for c in columns]
    values += [column.get(row, "–") for column in extra.values()]
    lines.append(f"| {row} | " + " | ".join(values) + " |")
  return "\n".join(lines)


def format_ms(t: Timing) -> str:
  """'12.3 [11.9–12.8]': median and interquartile range."""
  if t.q1_ms is None or t.q3_ms is None:
    return _number(t.median_ms)
  return f"{_number(t.median_ms)} [{_number(t.q1_ms)}–{_number(t.q3_ms)}]"


def format_ratio(ratio: tuple[float, bool]) -> str:
  """'3.1x', or '≈3.1x' when extrapolated."""
  value, estimated = ratio
  return ("≈" if estimated else "") + f"{value:.2f}x"


def format_mib(n: int | None) -> str:
  return "?" if n is None else f"{n / 2**20:.1f}" if n < 10 * 2**20 else f"{n / 2**20:.0f}"


def _number(x: float) -> str:
  return f"{x:.3g}" if x < 10 else f"{x:.1f}" if x < 1000 else f"{x:.0f}"


def write_report(path: str | pathlib.Path, markdown: str, payload: Any) -> None:
  """Writes the markdown report at `path` and `payload` as JSON beside it (.json)."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(markdown)
  path.with_suffix(".json").write_text(json.dumps(payload, indent=1))


def _ratio_cells(ratios: Mapping[tuple[str, int], tuple[float, bool]]) -> dict[tuple[str, int], str]:
  return {key: format_ratio(value) for key, value in ratios.items()}


def _exponent_column(timings: Sequence[Timing], names: Sequence[str]) -> tuple[str, dict[str, str]]:
  """('exponent (a→b)', {name: '1.02'}) over the lengths `exponent_lengths` picks per name."""
  column, spans = {}, set()
  for name in names:
    span = exponent_lengths(t.length for t in timings if t.name == name)
    if span is None:
      continue
    exponent = scaling_exponent(timings, name, *span)
    if exponent is not None:
      column[name] = f"{exponent:.2f}"
      spans.add(span)
  title = "exponent" + "".join(f" ({a}→{b})" for a, b in sorted(spans))
  return title, column


def _case_labels(data: Mapping[str, Any]) -> list[str]:
  return [case["label"] for case in data["cases"]]


def timing_sections(timings: Sequence[Timing], names: Sequence[str], dtype: str,
                    baselines: Sequence[str] = ("softmax",)) -> list[str]:
  """Markdown of one dtype: times, speed-ups with scaling exponents, memory and its ratio."""
  lines = []
  lengths = sorted({t.length for t in timings if t.dtype == dtype})
  mode_titles = {"forward_backward": "forward+backward", "forward": "forward"}
  for mode, title in mode_titles.items():
    subset = [t for t in timings if t.dtype == dtype and t.mode == mode]
    if not subset:
      continue
    rows = [n for n in names if any(t.name == n for t in subset)]
    exponent_title, exponents = _exponent_column(subset, rows)
    lines += [f"### {dtype}: {title} time (ms, median [interquartile range])", "",
              grid(rows, lengths, {(t.name, t.length): format_ms(t) for t in subset},
                   extra={exponent_title: exponents}), ""]
    for baseline in baselines:
      if not any(t.name == baseline for t in subset):
        continue
      lines += [f"### {dtype}: {title} speed-up over {baseline} (its time / ours; "
                f"≈: {baseline} extrapolated as n^{QUADRATIC_EXPONENT:g} beyond its longest length)",
                "", grid(rows, lengths, _ratio_cells(speedups(subset, baseline))), ""]
  subset = [t for t in timings if t.dtype == dtype and t.mode == "forward_backward"]
  rows = [n for n in names if any(t.name == n for t in subset)]
  if subset:
    lines += [f"### {dtype}: forward+backward peak memory (MiB, XLA's accounting of the "
              f"compiled call)", "",
              grid(rows, lengths, {(t.name, t.length): format_mib(t.peak_bytes) for t in subset}),
              ""]
    if any(t.device_peak_bytes is not None for t in subset):
      lines += [f"### {dtype}: forward+backward device peak (MiB, allocator high-water mark; "
                f"– where an earlier call had set a higher mark)", "",
                grid(rows, lengths, {(t.name, t.length): format_mib(t.device_peak_bytes)
                                     for t in subset if t.device_peak_bytes is not None}), ""]
    if any(t.name == "softmax" for t in subset):
      lines += [f"### {dtype}: forward+backward memory / softmax's (≈: softmax extrapolated as "
                f"n^{QUADRATIC_EXPONENT:g})", "",
                grid(rows, lengths, _ratio_cells(memory_ratios(subset))), ""]
  return lines


def summary_section(data: Mapping[str, Any], dtype: str) -> list[str]:
  """One row per case at the two lengths of the scaling fit (4096 and 16384 by default).

  Forward+backward: time, speed-up over softmax, exponent, memory and its
  ratio to softmax's, and the output error in that dtype with its reference.
  """
  timings = [Timing(**t) for t in data["timings"]
             if t["dtype"] == dtype and t["mode"] == "forward_backward"]
  span = exponent_lengths(t.length for t in timings)
  if span is None:
    return []
  short, long = span
  names = [n for n in _case_labels(data) if any(t.name == n for t in timings)]
  by_key = {(t.name, t.length): t for t in timings}
  speedup, memory = speedups(timings), memory_ratios(timings)
  found = {e["name"]: e for e in data.get("errors", []) if e["dtype"] == dtype}
  reference = {c["label"]: c["reference"] for c in data["cases"]}
  titles = [f"ms @ {short}", f"ms @ {long}", f"speed-up @ {short}", f"speed-up @ {long}",
            f"exponent {short}→{long}", f"MiB @ {long}", f"memory / softmax @ {long}",
            f"error ({dtype})", "compared with"]
  lines = [f"### {dtype}, forward+backward", "",
           "| method | " + " | ".join(titles) + " |",
           "| --- | " + " | ".join("---:" for _ in titles[:-1]) + " | --- |"]
  for name in names:
    exponent = scaling_exponent(timings, name, short, long)
    cells = [_number(by_key[(name, n)].median_ms) if (name, n) in by_key else "–"
             for n in (short, long)]
    cells += [format_ratio(speedup[(name, n)]) if (name, n) in speedup else "–"
              for n in (short, long)]
    cells.append("–" if exponent is None else f"{exponent:.2f}")
    cells.append(format_mib(by_key[(name, long)].peak_bytes) if (name, long) in by_key else "–")
    cells.append(format_ratio(memory[(name, long)]) if (name, long) in memory else "–")
    cells.append(f"{found[name]['mean']:.3g}" if name in found else "–")
    cells.append(reference.get(name, "–"))
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  return lines + [""]


def error_section(data: Mapping[str, Any]) -> list[str]:
  """Markdown of the approximation errors and of the knob sweep."""
  settings = data["settings"]
  found = data["errors"]
  if not found:
    return []
  dtypes = list(dict.fromkeys(e["dtype"] for e in found))
  by_case = {}
  for e in found:
    by_case.setdefault(e["name"], {})[e["dtype"]] = e
  approximation = {c["label"]: c["approximation"] for c in data["cases"]}
  lines = [f"## Approximation error at length {settings['error_length']}", "",
           f"Relative Frobenius error of the output, ||out - exact||_F / ||exact||_F, on q, k, v "
           f"i.i.d. N(0, {settings['error_input_scale']:g}^2) drawn from key "
           f"{settings['error_input_seed']} (batch {settings['batch']}, {settings['heads']} heads, "
           f"head_dim {settings['head_dim']}, every token real), learned parts at their "
           f"initialisation; mean ± std over seeds {settings['error_seeds']} (each seeds the "
           f"initialisation, e.g. fixed random features, and the attention key). The exact "
           f"attention runs in float32 on the same (rounded) inputs. Attention matrix: the "
           f"implied A with out = A V (float32, first seed), for methods linear in V.", "",
           "| method | compared with | " + " | ".join(f"output, {d}" for d in dtypes)
           + " | attention matrix | note |",
           "| --- | --- | " + " | ".join("---:" for _ in dtypes) + " | ---: | --- |"]
  for name in _case_labels(data):
    if name not in by_case:
      continue
    entries = by_case[name]
    first = next(iter(entries.values()))
    cells = [f"{entries[d]['mean']:.3g} ± {entries[d]['std']:.2g}" if d in entries else "–"
             for d in dtypes]
    matrix = next((e["matrix_error"] for e in entries.values() if e["matrix_error"] is not None),
                  None)
    note = "; ".join(dict.fromkeys(e["note"] for e in entries.values() if e["note"]))
    reference = first["reference"] + ("" if approximation.get(name, True) else " (not approximated)")
    lines.append(f"| {name} | {reference} | " + " | ".join(cells)
                 + f" | {'–' if matrix is None else f'{matrix:.3g}'} | {note} |")
  sweep = data.get("sweep") or []
  if sweep:
    values = sorted({row["value"] for row in sweep})
    rows = list(dict.fromkeys(f"{row['name']} ({row['knob']})" for row in sweep))
    cells = {(f"{row['name']} ({row['knob']})", row["value"]): f"{row['mean']:.3g}" for row in sweep}
    lines += ["", f"### Output error against the number of features / landmarks (float32, "
              f"length {settings['error_length']}, mean over the same seeds)", "",
              grid(rows, values, cells)]
  return lines + [""]


def torch_section(data: Mapping[str, Any]) -> list[str]:
  """Markdown of the PyTorch comparison: their times and ours / theirs per method."""
  torch = data.get("torch")
  if not torch:
    return []
  ours = {(t["name"], t["length"], t["dtype"], t["mode"]): t["median_ms"] for t in data["timings"]}
  counterpart = torch["counterpart"]
  lines = [f"## PyTorch implementations, timed in the same run (torch {torch['torch']}, "
           f"{torch['threads']} threads, {torch.get('device', 'cpu')})", "",
           "Time ratio ours / theirs at the same shapes (below 1: ours is faster; the issue's "
           "target, 1.5x faster, is ≤ 0.67); their median ms in brackets. pypi: and hf: entries "
           "include their q/k/v projections; 'autocast' marks a package that fails with "
           "bfloat16 tensors and ran under torch.autocast instead.", ""]
  results = torch["results"]
  for dtype in dict.fromkeys(r["dtype"] for r in results):
    for mode in ("forward_backward", "forward"):
      subset = [r for r in results if r["dtype"] == dtype and r["mode"] == mode]
      if not subset:
        continue
      rows, cells = [], {}
      for r in subset:
        row = f"{r['name']} / {counterpart.get(r['name'], '?')}"
        rows.append(row)
        mine = ours.get((counterpart.get(r["name"]), r["length"], dtype, mode))
        theirs = f"({_number(r['median_ms'])}{', autocast' if r.get('autocast') else ''})"
        cells[(row, r["length"])] = (f"{mine / r['median_ms']:.2f} " if mine else "– ") + theirs
      lengths = sorted({r["length"] for r in subset})
      title = "forward+backward" if mode == "forward_backward" else "forward"
      lines += [f"### {dtype}: {title}, ours / theirs", "",
                grid(list(dict.fromkeys(rows)), lengths, cells, first="reference / ours"), ""]
  if torch.get("failures"):
    lines += ["Failed references:", ""]
    lines += [f"- {f['name']} {f['dtype']} {f['length']} {f['mode']}: {f['error']}"
              for f in torch["failures"]]
    lines.append("")
  return lines


def attention_markdown(data: Mapping[str, Any], plots: Mapping[str, str] | None = None) -> str:
  """The whole Markdown report of a `suite.payload`; `plots` maps a title to a relative PNG path."""
  env, settings = data["environment"], data["settings"]
  timings = [Timing(**t) for t in data["timings"]]
  names = _case_labels(data)
  baselines = [b for b in ("softmax", "sdpa_cudnn") if b in names]
  lines = [
      "# Attention benchmark: time, memory and approximation error", "",
      f"{env['date']}, {env['platform']} ({env['device_kind']}), {env['processor']}, "
      f"{env['cpu_count']} CPUs, jax {env['jax']}."
      + (f" Command: `{env['command']}`." if env.get("command") else "")
      + (f" GLIBC_TUNABLES: `{env['glibc_tunables'] or 'unset'}`." if "glibc_tunables" in env
         else ""), "",
      f"Attention core alone (projections excluded), q, k, v [batch {settings['batch']}, length, "
      f"{settings['heads']} heads, head_dim {settings['head_dim']}], every token real, "
      + ("hyper-parameters from the registry's small_input_kwargs (a smoke run). "
         if settings.get("small_inputs") else
         "hyper-parameters at the modules' defaults (the reference values). ")
      + f"Each call is jitted and "
      f"compiled first (compile time excluded), run {settings['warmup']} time(s) untimed, then "
      f"timed {settings['repeats']} times with `block_until_ready`; cells are the median "
      f"[interquartile range] in ms. Forward+backward is the gradient of sum(out^2) with "
      f"respect to q, k, v and the parameters. Quadratic methods "
      f"({', '.join(c['label'] for c in data['cases'] if c['quadratic']) or 'none'}) stop at "
      f"length {settings['max_quadratic_length']}. Scaling exponent: "
      f"log(t_long / t_short) / log(long / short), 1 for linear cost.", ""]
  summaries = [line for dtype in settings["dtypes"] for line in summary_section(data, dtype)]
  if summaries:
    lines += ["## Summary", "",
              f"Speed-up: softmax's time / ours (≈: softmax extrapolated as n^{QUADRATIC_EXPONENT:g} "
              f"beyond its longest measured length, a conservative estimate); exponent: the "
              f"scaling fit; memory: XLA's accounting of the compiled call; error: relative "
              f"Frobenius error of the output against the exact attention named in the last "
              f"column (details below).", ""] + summaries
  for dtype in settings["dtypes"]:
    lines += [f"## {dtype}", ""] + timing_sections(timings, names, dtype, baselines)
  lines += error_section(data)
  lines += torch_section(data)
  if data.get("failures"):
    lines += ["## Failures", ""]
    lines += [f"- {f['name']} {f['dtype']} {f['length']} {f['mode']}: {f['error']}"
              for f in data["failures"]]
    lines.append("")
  if plots:
    lines += ["## Plots", ""] + [f"![{title}]({path})" for title, path in plots.items()] + [""]
  return "\n".join(lines)
