"""Forward+backward time and peak memory of every attention method, with references.

    python benchmarks/attention.py                        # all methods, 1024..16384
    python benchmarks/attention.py --methods=nystrom,skyformer --lengths=1024,4096
    python benchmarks/attention.py --torch --out=benchmarks/results/attention_cpu.md

Batch 4, 2 heads, head_dim 32 (the issue's setting), float32. Quadratic
methods stop at --max_quadratic_length (their n x n matrices outgrow memory).
With --torch (needs `pip install -e .[torch-reference]`), the seed repos'
PyTorch attention cores and the package-index implementations run in the same
process, so the speed-ups are measured on one machine at one time; see
benchmarks/torch_references.py. Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import datetime
import json
import pathlib
import platform
import subprocess
import sys

import jax

from lra_jax import attention, benchmark

QUADRATIC = ("softmax", "kernelized")


def _parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--methods", default=",".join(attention.names()),
                      help="comma-separated registered names (default: all)")
  parser.add_argument("--lengths", default="1024,2048,4096,8192,16384")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--max_quadratic_length", type=int, default=8192)
  parser.add_argument("--torch", action="store_true", help="also time the PyTorch references")
  parser.add_argument("--out", default="", help="write the markdown report here (and .json beside)")
  return parser.parse_args(argv)


def _time_torch(lengths, repeats, max_quadratic_length):
  """The references, timed in a child process (no thread-pool contention with XLA)."""
  quadratic_labels = ("seed:softmax", "seed:kernelized")
  skip = [f"{label}@{length}" for label in quadratic_labels for length in lengths
          if length > max_quadratic_length]
  script = pathlib.Path(__file__).with_name("torch_references.py")
  completed = subprocess.run(
      [sys.executable, str(script), f"--lengths={','.join(map(str, lengths))}",
       f"--repeats={repeats}", f"--skip={','.join(skip)}"],
      capture_output=True, text=True, check=False)
  if completed.returncode:
    raise SystemExit(f"The PyTorch references failed (is torch installed? `pip install -e "
                     f".[torch-reference]`):\n{completed.stderr[-2000:]}")
  payload = json.loads(completed.stdout.strip().splitlines()[-1])
  timings = [benchmark.Timing(r["name"], r["length"], r["median_ms"]) for r in payload["results"]]
  for t in timings:
    print(f"  {t.name:28s} {t.length:6d} {t.median_ms:10.1f} ms", flush=True)
  return timings, payload["counterpart"]


def _report(ours, references, counterpart) -> str:
  device = jax.devices()[0]
  lines = [
      f"# Attention forward+backward, batch 4, 2 heads, head_dim 32, float32",
      "",
      f"{datetime.date.today()}, {device.platform} ({device.device_kind}), "
      f"{platform.processor() or platform.machine()}, jax {jax.__version__}. Median ms of one "
      f"jitted forward+backward call.",
      "",
      "## Time (ms)",
      "",
      benchmark.markdown_table(ours, lambda t: f"{t.median_ms:.1f}"),
      "",
      "## Peak memory (MiB, XLA's accounting of the compiled call)",
      "",
      benchmark.markdown_table(
          ours, lambda t: "?" if t.peak_bytes is None else f"{t.peak_bytes / 2**20:.0f}"),
      "",
      "## Scaling time(16384) / time(4096) (linear = 4.0)",
      "",
  ]
  for name in dict.fromkeys(t.name for t in ours):
    ratio = benchmark.scaling_ratio(ours, name, 4096, 16384)
    if ratio is not None:
      lines.append(f"- {name}: {ratio:.2f}")
  if references:
    lines += ["", "## PyTorch references in the same run (ms)", "",
              benchmark.markdown_table(references, lambda t: f"{t.median_ms:.1f}"),
              "", "## Speed-up: reference time / our time", ""]
    ours_by_key = {(t.name, t.length): t.median_ms for t in ours}
    speedups = [benchmark.Timing(f"{label} / {counterpart[label]}", t.length,
                                 t.median_ms / ours_by_key[(counterpart[label], t.length)])
                for label in dict.fromkeys(t.name for t in references)
                for t in references if t.name == label
                and (counterpart[label], t.length) in ours_by_key]
    lines.append(benchmark.markdown_table(speedups, lambda t: f"{t.median_ms:.2f}x"))
  return "\n".join(lines) + "\n"


def main(argv=None):
  args = _parse_args(argv)
  lengths = [int(x) for x in args.lengths.split(",")]
  references, counterpart = ([], {})
  if args.torch:
    references, counterpart = _time_torch(lengths, args.repeats, args.max_quadratic_length)
  ours = []
  for length in lengths:
    for name in args.methods.split(","):
      if name in QUADRATIC and length > args.max_quadratic_length:
        continue
      ours.append(benchmark.time_attention(name, length, repeats=args.repeats))
      t = ours[-1]
      print(f"  {name:28s} {length:6d} {t.median_ms:10.1f} ms "
            f"{(t.peak_bytes or 0) / 2**20:8.0f} MiB", flush=True)
  report = _report(ours, references, counterpart)
  print(report)
  if args.out:
    benchmark.write_report(args.out, report, {"ours": [t.__dict__ for t in ours],
                                              "references": [t.__dict__ for t in references]})


if __name__ == "__main__":
  main()
