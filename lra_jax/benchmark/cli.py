"""The command line: `python -m lra_jax.benchmark attention [flags]`.

    python -m lra_jax.benchmark attention                       # everything, 1024..16384
    python -m lra_jax.benchmark attention --methods=nystrom,skyformer --lengths=1024,4096
    python -m lra_jax.benchmark attention --spectraformer_grid --torch --out=benchmarks/results
    python -m lra_jax.benchmark report benchmarks/results/attention_cpu.json   # redraw a saved run

Writes OUT/NAME.json (every measurement), OUT/NAME.md (the tables) and
OUT/NAME_{time,memory,error}.png; NAME defaults to attention_<platform>.
Run it on an otherwise idle machine: the timings are wall-clock.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

import jax

from lra_jax.benchmark import plots, report, suite, timing


def _ints(text: str) -> list[int]:
  return [int(x) for x in text.split(",") if x.strip()]


def _names(text: str) -> list[str]:
  return [x.strip() for x in text.split(",") if x.strip()]


def parser() -> argparse.ArgumentParser:
  root = argparse.ArgumentParser(prog="python -m lra_jax.benchmark",
                                 description="Benchmarks of lra_jax.")
  commands = root.add_subparsers(dest="command", required=True)
  p = commands.add_parser(
      "attention", help="time, memory and approximation error of every attention method",
      description=__doc__.split("\n")[0])
  p.add_argument("--methods", default="",
                 help="comma-separated registered names (default: all; plus sdpa_cudnn on a GPU); "
                      "baselines sdpa_cudnn and sdpa_xla (jax.nn.dot_product_attention) may be named")
  p.add_argument("--lengths", default="1024,2048,4096,8192,16384")
  p.add_argument("--dtypes", default="float32,bfloat16")
  p.add_argument("--modes", default="forward,forward_backward")
  p.add_argument("--repeats", type=int, default=5, help="timed calls per measurement")
  p.add_argument("--warmup", type=int, default=1, help="untimed calls after compilation")
  p.add_argument("--batch", type=int, default=4)
  p.add_argument("--heads", type=int, default=2)
  p.add_argument("--head_dim", type=int, default=32)
  p.add_argument("--max_quadratic_length", type=int, default=8192,
                 help=f"longest length for the O(n^2) methods ({', '.join(suite.QUADRATIC)})")
  p.add_argument("--spectraformer_grid", action="store_true",
                 help="also every (feature_map x weight_matrix) combination of spectraformer")
  p.add_argument("--small_inputs", action="store_true",
                 help="start each method from its registry small_input_kwargs (smoke runs at "
                      "lengths of a few dozen tokens)")
  p.add_argument("--error_length", type=int, default=1024,
                 help="sequence length of the approximation-error measurement")
  p.add_argument("--error_seeds", type=int, default=3,
                 help="seeds 0..N-1 per error (each seeds the initialisation and the attention key)")
  p.add_argument("--error_input_scale", type=float, default=1.0,
                 help="standard deviation of the random q, k, v of the error measurement")
  p.add_argument("--knob_values", default="16,32,64,128,256,512",
                 help="features / landmarks of the error sweep (values above --error_length skipped)")
  p.add_argument("--no_errors", action="store_true", help="skip the approximation errors")
  p.add_argument("--no_sweep", action="store_true", help="skip the error-against-features sweep")
  p.add_argument("--no_attention_matrix", action="store_true",
                 help="skip the attention-matrix error (the slowest part of the error measurement)")
  p.add_argument("--torch", action="store_true",
                 help="also time the PyTorch implementations (pip install -e .[torch-reference])")
  p.add_argument("--out", default="benchmarks/results", help="output directory")
  p.add_argument("--name", default="", help="file stem (default attention_<platform>)")
  p.add_argument("--no_plots", action="store_true")
  r = commands.add_parser("report", help="rebuild the Markdown and the plots of a saved run",
                          description="Rewrites NAME.md and the PNGs beside a saved NAME.json.")
  r.add_argument("json", help="the run's JSON file")
  return root


def _log(message: str) -> None:
  print(message, file=sys.stderr, flush=True)


def run_attention(args: argparse.Namespace, argv: list[str] | None = None) -> dict:
  """Runs the attention suite; writes and returns the payload."""
  lengths, dtypes, modes = _ints(args.lengths), _names(args.dtypes), _names(args.modes)
  for mode in modes:
    if mode not in timing.MODES:
      raise SystemExit(f"--modes: {mode!r} is not one of {', '.join(timing.MODES)}.")
  shape = suite.Shape(args.batch, args.heads, args.head_dim)
  # First, before JAX allocates device memory, so the child can use it all.
  torch_payload = None
  if args.torch:
    torch_payload = suite.run_torch(lengths, dtypes, shape, repeats=args.repeats,
                                    warmup=args.warmup,
                                    max_quadratic_length=args.max_quadratic_length, log=_log)
  methods = _names(args.methods) or suite.default_methods()
  cases = suite.build_cases(methods, grid=args.spectraformer_grid, small_inputs=args.small_inputs,
                            log=_log)
  _log(f"{len(cases)} cases on {jax.devices()[0].device_kind}: timing")
  timings, failures = suite.run_timings(cases, lengths, dtypes, shape, repeats=args.repeats,
                                        warmup=args.warmup,
                                        max_quadratic_length=args.max_quadratic_length,
                                        modes=modes, log=_log)
  seeds = list(range(args.error_seeds))
  errors_found, sweep = [], []
  if not args.no_errors:
    _log(f"approximation errors at length {args.error_length}")
    errors_found, more = suite.run_errors(cases, dtypes, shape, length=args.error_length,
                                          seeds=seeds, input_scale=args.error_input_scale,
                                          attention_matrix=not args.no_attention_matrix, log=_log)
    failures += more
    if not args.no_sweep:
      sweep, more = suite.run_sweep(cases, _ints(args.knob_values), shape, length=args.error_length,
                                    seeds=seeds, input_scale=args.error_input_scale, log=_log)
      failures += more
  settings = {"methods": methods, "lengths": lengths, "dtypes": dtypes, "modes": modes,
              "repeats": args.repeats, "warmup": args.warmup, "batch": args.batch,
              "heads": args.heads, "head_dim": args.head_dim,
              "max_quadratic_length": args.max_quadratic_length,
              "spectraformer_grid": args.spectraformer_grid, "small_inputs": args.small_inputs,
              "error_length": args.error_length, "error_seeds": seeds, "error_input_seed": 0,
              "error_input_scale": args.error_input_scale}
  command = ["python -m lra_jax.benchmark"] + (sys.argv[1:] if argv is None else list(argv))
  data = suite.payload(settings=settings, cases=cases, timings=timings, errors_found=errors_found,
                       sweep=sweep, failures=failures, torch=torch_payload, command=command)
  out = pathlib.Path(args.out)
  stem = args.name or f"attention_{jax.devices()[0].platform}"
  drawn = {} if args.no_plots else plots.all_plots(data, out, stem)
  markdown = report.attention_markdown(data, drawn)
  report.write_report(out / f"{stem}.md", markdown, data)
  _log(f"wrote {out / stem}.md, .json" + (f" and {len(drawn)} plots" if drawn else ""))
  print(markdown)
  return data


def main(argv: list[str] | None = None) -> dict:
  args = parser().parse_args(argv)
  if args.command == "attention":
    return run_attention(args, argv)
  if args.command == "report":
    return rebuild(args.json)
  raise SystemExit(f"Unknown command {args.command!r}.")


def rebuild(json_path: str | pathlib.Path) -> dict:
  """Rewrites the Markdown report and the plots of a saved run beside its JSON; returns the run."""
  path = pathlib.Path(json_path)
  data = json.loads(path.read_text())
  path.with_suffix(".md").write_text(
      report.attention_markdown(data, plots.all_plots(data, path.parent, path.stem)))
  _log(f"wrote {path.with_suffix('.md')} and its plots")
  return data
