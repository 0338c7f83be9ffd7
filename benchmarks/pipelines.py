"""Input pipeline throughput next to the train step rate, per LRA task and protocol.

    python benchmarks/pipelines.py                                    # 5 tasks x 2 protocols
    python benchmarks/pipelines.py --tasks=listops,text --protocols=pytorch_lra
    python benchmarks/pipelines.py --data_dir=TFDS_DIR --release_dir=LRA_RELEASE
    python benchmarks/pipelines.py --out=benchmarks/results/pipelines_cpu.md

For each task, the default config (`configs/<task>_softmax.py`, protocol
`official` or `pytorch_lra`) is measured twice:

* pipeline: examples/s of `lra_jax.data.get_datasets(config).train`, iterated
  as numpy batches as the trainer iterates it, with nothing else running in
  the process: the median of `--pipeline_repeats` windows of `--batches`
  batches after `--warmup_batches` (whole epochs when the split fits in the
  shuffle buffer, see `time_pipeline`);
* train: examples/s of the train step jitted as `trainer.Run` jits it, on
  random int batches of the config's shape, median of `--steps` steps after
  compilation and `--warmup_steps`.

Their ratio says whether the pipeline could ever hold training back (below 1
it would; far above 1 it never will on that accelerator). A step that does
not fit in `--memory_budget_gb` (XLA's accounting of the compiled step) gets
more gradient accumulation micro-batches (`train.grad_accum_steps`, the same
update), and `--max_step_examples` times a step on only that many examples,
so a slow CPU measures the per-example rate of a big config without running
whole steps; the report says where either happened. Defaults suit an
accelerator; on a small CPU (official Retrieval needs 9.1 GiB even one pair
per micro-batch), e.g.

    python benchmarks/pipelines.py --max_step_examples=2 --memory_budget_gb=10

Data: the real data when the config finds it (`--data_dir`, `--release_dir`
or `--set data.data_dir=...`); otherwise, or with `--synthetic`, a few
thousand synthetic examples per task in the exact raw formats
(benchmarks/synthetic_data.py) go through the same pipelines. Any config
field can be set for every task with `--set path=value`.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import datetime
import functools
import importlib.util
import math
import os
import pathlib
import platform
import statistics
import sys
import tempfile
import time
from typing import Any

import jax
import ml_collections
import numpy as np

from lra_jax import benchmark, data, errors, models, parallel, steps, trainer

# Beside this script, so on sys.path when it runs as one.
import synthetic_data  # pylint: disable=wrong-import-order

TASKS = ("listops", "text", "retrieval", "image", "pathfinder")
PROTOCOLS = ("official", "pytorch_lra")
CONFIG_DIR = pathlib.Path(__file__).resolve().parent.parent / "configs"


@dataclasses.dataclass(frozen=True)
class PipelineTiming:
  """Throughput of one task's training input pipeline.

  Attributes:
    examples_per_s: examples per second, median over the timed windows.
    batches: batches per timed window (after the warm-up ones).
    batch_size: rows per batch.
    num_train: examples in the training split.
    setup_s: seconds in get_datasets and the warm-up batches (file opening,
      the first shuffle-buffer fill).
  """

  examples_per_s: float
  batches: int
  batch_size: int
  num_train: int
  setup_s: float


@dataclasses.dataclass(frozen=True)
class StepTiming:
  """Rate of one config's train step.

  Attributes:
    examples_per_s: examples per second of the timed step.
    step_s: seconds of one full step (batch_size examples), extrapolated
      from the timed step when it held fewer examples.
    grad_accum_steps: micro-batches per full step (the config's, or more to
      fit the memory budget).
    micro_batch_size: examples per micro-batch of the full step.
    timed_examples: examples in the step that was timed (batch_size unless
      capped by max_step_examples).
    peak_bytes: XLA's memory accounting of the full step, or None if unknown.
    steps: steps timed.
    compile_s: seconds compiling (every accumulation tried).
  """

  examples_per_s: float
  step_s: float
  grad_accum_steps: int
  micro_batch_size: int
  timed_examples: int
  peak_bytes: int | None
  steps: int
  compile_s: float


@dataclasses.dataclass(frozen=True)
class Row:
  """One task under one protocol."""

  task: str
  protocol: str
  batch_size: int
  padded_length: int
  num_inputs: int
  data_source: str
  pipeline: PipelineTiming
  step: StepTiming | None
  note: str = ""


def _parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--tasks", default=",".join(TASKS))
  parser.add_argument("--protocols", default=",".join(PROTOCOLS))
  parser.add_argument("--batches", type=int, default=50,
                      help="pipeline batches timed (at least; rounded up to whole epochs when "
                           "the split fits in the shuffle buffer)")
  parser.add_argument("--warmup_batches", type=int, default=3)
  parser.add_argument("--pipeline_repeats", type=int, default=3,
                      help="timed windows of --batches batches; the median is reported")
  parser.add_argument("--steps", type=int, default=None,
                      help="train steps timed (default 2 on CPU, 10 on an accelerator)")
  parser.add_argument("--warmup_steps", type=int, default=1,
                      help="untimed steps after compilation")
  parser.add_argument("--memory_budget_gb", type=float, default=None,
                      help="largest step XLA may plan (default: 90%% of the accelerator's "
                           "memory; half the RAM on CPU)")
  parser.add_argument("--max_step_examples", type=int, default=0,
                      help="time steps on at most this many examples (0: the full batch)")
  parser.add_argument("--skip_train", action="store_true", help="pipelines only")
  parser.add_argument("--data_dir", default="", help="sets data.data_dir of every task")
  parser.add_argument("--release_dir", default="",
                      help="sets data.release_dir (listops, retrieval, pathfinder)")
  parser.add_argument("--set", action="append", default=[], metavar="PATH=VALUE",
                      help="config override for every task, e.g. --set model.dtype=bfloat16")
  parser.add_argument("--synthetic", action=argparse.BooleanOptionalAction, default=None,
                      help="synthetic data (default: only for tasks whose data are missing)")
  parser.add_argument("--synthetic_dir", default="",
                      help="keep (and reuse) the synthetic data here (default: a temp dir)")
  parser.add_argument("--out", default="", help="write the markdown report here (and .json beside)")
  return parser.parse_args(argv)


def load_config(task: str, protocol: str) -> ml_collections.ConfigDict:
  """`configs/<task>_softmax.py:<protocol>`, as --config would load it."""
  path = CONFIG_DIR / f"{task}_softmax.py"
  spec = importlib.util.spec_from_file_location(f"{task}_softmax", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(protocol)


def _parse_value(text: str) -> Any:
  """A Python literal (2, 1e-3, True, None) when it is one, else the string itself."""
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def apply_overrides(config: ml_collections.ConfigDict, overrides: dict[str, Any]) -> None:
  """Sets dotted paths (`data.data_dir`) in `config`; the config's type checks apply."""
  for path, value in overrides.items():
    *parents, name = path.split(".")
    node = config
    for key in [*parents, name]:
      if not isinstance(node, ml_collections.ConfigDict) or key not in node:
        raise errors.ConfigError(f"{path!r} is not a field of the {config.task} config.")
      if key != name:
        node = node[key]
    node[name] = value


def _user_overrides(args, config: ml_collections.ConfigDict) -> dict[str, Any]:
  overrides = {}
  if args.data_dir:
    overrides["data.data_dir"] = args.data_dir
  if args.release_dir and "release_dir" in config.data:
    overrides["data.release_dir"] = args.release_dir
  for item in args.set:
    path, separator, value = item.partition("=")
    if not separator:
      raise SystemExit(f"--set takes PATH=VALUE, got {item!r}.")
    overrides[path] = _parse_value(value)
  return overrides


def has_data(config: ml_collections.ConfigDict) -> bool:
  """Whether the task's reader finds (or can prepare) its training split as configured."""
  try:
    data.reader(config)(config.data, "train")
  except errors.DataNotFoundError:
    return False
  return True


def time_pipeline(config: ml_collections.ConfigDict, batches: int, warmup_batches: int,
                  repeats: int = 3) -> PipelineTiming:
  """Examples/s of the training split as numpy batches (what the trainer feeds on),
  the median over `repeats` consecutive windows of `batches` batches.

  A split no larger than the shuffle buffer is read whole into it before its
  epoch's first batch comes out, so the stream is periodic; then the warm-up
  is one epoch and each window whole epochs (at least `batches` batches), or
  the examples already in the buffer would count as speed.
  """
  _, num_train = data.reader(config)(config.data, "train")
  batch_size = config.data.batch_size
  if num_train <= config.data.shuffle_buffer_size:
    epoch = math.ceil(num_train / batch_size)
    warmup_batches, batches = epoch, epoch * math.ceil(batches / epoch)
  start = time.perf_counter()
  iterator = data.get_datasets(config).train.as_numpy_iterator()
  for _ in range(warmup_batches):
    next(iterator)
  setup_s = time.perf_counter() - start
  rates = []
  for _ in range(repeats):
    start = time.perf_counter()
    for _ in range(batches):
      next(iterator)
    rates.append(batches * batch_size / (time.perf_counter() - start))
  return PipelineTiming(statistics.median(rates), batches, batch_size, num_train, setup_s)


def random_batch(config: ml_collections.ConfigDict, batch_size: int,
                 seed: int = 0) -> dict[str, np.ndarray]:
  """Int tokens of the config's shape, every position real (the step's cost does not
  depend on the values)."""
  rng = np.random.default_rng(seed)
  shape = (batch_size, config.data.padded_length)
  batch = {name: rng.integers(1, config.model.vocab_size, shape, dtype=np.int32)
           for name in models.input_names(config)}
  batch["targets"] = rng.integers(0, config.model.num_classes, batch_size, dtype=np.int32)
  batch["valid"] = np.ones(batch_size, bool)
  return batch


def _jitted_train_step(config: ml_collections.ConfigDict, model, mesh, grad_accum_steps: int):
  """`steps.train_step` jitted exactly as `trainer.Run` jits it."""
  replicated, sharded = parallel.replicated(mesh), parallel.batch_sharded(mesh)
  return jax.jit(
      functools.partial(steps.train_step, model=model, input_names=models.input_names(config),
                        grad_accum_steps=grad_accum_steps),
      in_shardings=(replicated, sharded, replicated), out_shardings=replicated,
      donate_argnums=0)


def _accumulation_choices(batch_size: int, first: int, num_devices: int) -> list[int]:
  """Micro-batch counts from `first` up that split the batch evenly over the devices."""
  return [k for k in range(first, batch_size + 1)
          if batch_size % k == 0 and (batch_size // k) % num_devices == 0]


def _fit_accumulation(config: ml_collections.ConfigDict, compile_step, full_batch,
                      memory_budget: float) -> tuple[int, Any, int | None]:
  """(micro-batches, compiled step, XLA's peak bytes) of an accumulation whose
  full step fits in `memory_budget`, from `train.grad_accum_steps` up.

  After a step that does not fit it jumps straight to the accumulation that
  should (activations shrink about as 1 / micro-batches), so one or two
  compilations usually suffice; a smaller one that would just fit may be
  skipped.

  Raises:
    MemoryError: not even micro-batches of one example per device fit.
  """
  choices = _accumulation_choices(config.data.batch_size, config.train.grad_accum_steps,
                                  jax.device_count())
  accum = choices[0]
  while True:
    compiled = compile_step(accum, full_batch)
    peak = benchmark.compiled_peak_bytes(compiled)
    if peak is None or peak <= memory_budget:
      return accum, compiled, peak
    larger = [k for k in choices if k > accum]
    if not larger:
      raise MemoryError(f"the step needs {peak / 2**30:.1f} GiB even with {accum} micro-batches "
                        f"(budget {memory_budget / 2**30:.1f} GiB); not timed.")
    estimate = accum * peak / memory_budget
    accum = next((k for k in larger if k >= estimate), larger[-1])


def time_train_step(config: ml_collections.ConfigDict, num_steps: int, memory_budget: float,
                    max_step_examples: int = 0, warmup_steps: int = 1) -> StepTiming:
  """Examples/s of `config`'s train step on random batches.

  The accumulation is raised from `train.grad_accum_steps` until XLA plans
  the full step within `memory_budget` bytes. With `max_step_examples`, the
  timed step holds only that many examples: whole micro-batches of the
  planned size, or one smaller micro-batch when a planned one is larger.
  The work per example is the same; only the optimiser update (a small
  share) is spread over fewer examples, and the full step time is
  extrapolated.

  Raises:
    MemoryError: see `_fit_accumulation`.
  """
  trainer.check_config(config, jax.device_count(), jax.process_count())
  mesh = parallel.create_mesh()
  model = models.create_model(config)
  rng = jax.random.key(config.seed)
  state = trainer.create_train_state(config, model, rng, mesh)

  def compile_step(accum, batch):
    return _jitted_train_step(config, model, mesh, accum).lower(state, batch, rng).compile()

  batch_size, num_devices = config.data.batch_size, jax.device_count()
  compile_start = time.perf_counter()
  full_batch = parallel.global_batch(random_batch(config, batch_size), mesh)
  accum, compiled, peak = _fit_accumulation(config, compile_step, full_batch, memory_budget)
  micro_batch_size = batch_size // accum
  timed_accum, timed_micro = accum, micro_batch_size
  if 0 < max_step_examples < batch_size:
    timed_micro = max(num_devices, min(micro_batch_size, max_step_examples) // num_devices
                      * num_devices)
    timed_accum = max(1, min(accum, max_step_examples // timed_micro))
  timed_examples = timed_accum * timed_micro
  batch = full_batch
  if timed_examples < batch_size:
    batch = parallel.global_batch(random_batch(config, timed_examples), mesh)
    compiled = compile_step(timed_accum, batch)
  compile_s = time.perf_counter() - compile_start
  for _ in range(warmup_steps):
    state, _ = compiled(state, batch, rng)
  jax.block_until_ready(state)
  times = []
  for _ in range(num_steps):
    start = time.perf_counter()
    state, metrics = compiled(state, batch, rng)
    jax.block_until_ready((state, metrics))
    times.append(time.perf_counter() - start)
  median = statistics.median(times)
  return StepTiming(examples_per_s=timed_examples / median,
                    step_s=median * batch_size / timed_examples, grad_accum_steps=accum,
                    micro_batch_size=micro_batch_size, timed_examples=timed_examples,
                    peak_bytes=peak, steps=num_steps, compile_s=compile_s)


def default_memory_budget() -> float:
  """90% of the accelerator's memory, or half the host's RAM on CPU (bytes)."""
  stats = jax.devices()[0].memory_stats() or {}
  if "bytes_limit" in stats:
    return 0.9 * stats["bytes_limit"]
  return 0.5 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _data_source(args, config, task: str, synthetic_root: str) -> str:
  """Points `config` at real or synthetic data; says which."""
  use_synthetic = args.synthetic
  if use_synthetic is None:
    use_synthetic = not has_data(config)
  if not use_synthetic:
    return "real"
  apply_overrides(config, synthetic_data.prepare(task, synthetic_root))
  # Flags win over the synthetic paths for anything but where the data are.
  apply_overrides(config, {k: v for k, v in _user_overrides(args, config).items()
                           if k not in ("data.data_dir", "data.release_dir")})
  return "synthetic"


def measure(args, task: str, protocol: str, synthetic_root: str, num_steps: int,
            memory_budget: float) -> Row:
  """One row of the report."""
  config = load_config(task, protocol)
  apply_overrides(config, _user_overrides(args, config))
  source = _data_source(args, config, task, synthetic_root)
  pipeline = time_pipeline(config, args.batches, args.warmup_batches, args.pipeline_repeats)
  print(f"  {task:10s} {protocol:11s} pipeline {_number(pipeline.examples_per_s):>10s} ex/s "
        f"({source})", flush=True)
  step, note = None, ""
  if not args.skip_train:
    try:
      step = time_train_step(config, num_steps, memory_budget, args.max_step_examples,
                             args.warmup_steps)
      print(f"  {task:10s} {protocol:11s} train    {_number(step.examples_per_s):>10s} ex/s "
            f"(accum {step.grad_accum_steps}, timed on {step.timed_examples}, "
            f"{_number(step.step_s)} s/step, compiled in {step.compile_s:.0f} s)", flush=True)
    except MemoryError as error:
      note = str(error)
      print(f"  {task:10s} {protocol:11s} train    {note}", flush=True)
  return Row(task, protocol, config.data.batch_size, config.data.padded_length,
             len(models.input_names(config)), source, pipeline, step, note)


def _machine() -> str:
  device = jax.devices()[0]
  cpu = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
  except (OSError, StopIteration):
    pass
  memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
  return (f"{jax.device_count()} x {device.platform} ({device.device_kind}); host {cpu}, "
          f"{os.cpu_count()} cores, {memory:.0f} GiB RAM")


def _number(x: float) -> str:
  """Three significant digits, whole numbers from 100 up (rates span 0.05 to 50,000)."""
  return f"{x:,.0f}" if x >= 100 else f"{x:.3g}"


def _step_cells(step: StepTiming | None) -> list[str]:
  if step is None:
    return ["–"] * 5
  timed = "all" if step.timed_examples == step.micro_batch_size * step.grad_accum_steps else (
      str(step.timed_examples))
  memory = "?" if step.peak_bytes is None else f"{step.peak_bytes / 2**30:.1f}"
  return [_number(step.examples_per_s), _number(step.step_s), str(step.grad_accum_steps), timed,
          memory]


def _ratio(row: Row) -> str:
  if row.step is None:
    return "–"
  return _number(row.pipeline.examples_per_s / row.step.examples_per_s) + "x"


def report(rows: list[Row], args, num_steps: int, memory_budget: float,
           load: tuple[float, float]) -> str:
  """The markdown report: how it was measured, then one table per protocol.

  `load` is the host's 1-minute load average at the start and the end: above
  its core count, other work was slowing both measurements down.
  """
  import tensorflow as tf  # only for its version

  lines = [
      "# Input pipelines vs train steps, softmax configs",
      "",
      f"{datetime.date.today()}; {_machine()}; jax {jax.__version__}, tensorflow "
      f"{tf.__version__}. Host load average (1 min) at start / end: {load[0]:.1f} / "
      f"{load[1]:.1f}. Command: `python benchmarks/pipelines.py {' '.join(args.argv)}`."
      .replace(" `.", "`."),
      "",
      "- **pipeline ex/s**: `data.get_datasets(config).train` iterated as numpy batches, "
      f"alone in the process; median of {args.pipeline_repeats} windows of at least "
      f"{args.batches} batches (whole epochs after a warm-up epoch when the split fits in the "
      f"shuffle buffer, else after {args.warmup_batches} warm-up batches).",
      f"- **train ex/s**: the jitted train step of `configs/<task>_softmax.py` on random "
      f"batches, median of {num_steps} step(s) after compilation and {args.warmup_steps} "
      f"warm-up step(s). **step (s)**: one full batch.",
      f"- **accumulation**: micro-batches per step (`train.grad_accum_steps`), raised from the "
      f"config's until XLA's plan of the full step (**memory**, GiB) fits in "
      f"{memory_budget / 2**30:.1f} GiB; the same update.",
      "- **timed on**: examples in the timed step when fewer than the batch "
      "(`--max_step_examples`); the step time is then extrapolated per example.",
      "- **pipeline / train**: above 1, the pipeline alone outpaces the step.",
  ]
  for protocol in dict.fromkeys(row.protocol for row in rows):
    lines += ["", f"## {protocol}", "",
              "| task | batch x length | pipeline ex/s | train ex/s | step (s) | accumulation "
              "| timed on | memory (GiB) | pipeline / train |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in (r for r in rows if r.protocol == protocol):
      shape = f"{row.batch_size} x {row.padded_length}" + (
          f" x {row.num_inputs}" if row.num_inputs > 1 else "")
      cells = [row.task, shape, _number(row.pipeline.examples_per_s), *_step_cells(row.step),
               _ratio(row)]
      lines.append("| " + " | ".join(cells) + " |")
    lines += [f"- {row.task}: {row.note}" for row in rows
              if row.protocol == protocol and row.note]
  lines += ["", "## Data", ""]
  for task in dict.fromkeys(row.task for row in rows):
    row = next(r for r in rows if r.task == task)
    lines.append(f"- {task}: {row.data_source}, {row.pipeline.num_train:,} training examples.")
  if any(row.data_source == "synthetic" for row in rows):
    lines += ["", "Synthetic data (benchmarks/synthetic_data.py) are written in the raw "
              "release and TFDS formats, at realistic example sizes, and read by the same "
              "readers as real data."]
  return "\n".join(lines) + "\n"


def main(argv=None):
  argv = sys.argv[1:] if argv is None else list(argv)
  args = _parse_args(argv)
  args.argv = argv
  import tensorflow as tf
  import tensorflow_datasets as tfds

  # TF only feeds data; it must not take accelerator memory from JAX.
  tf.config.set_visible_devices([], "GPU")
  tfds.disable_progress_bar()
  tasks, protocols = args.tasks.split(","), args.protocols.split(",")
  for name, chosen, valid in (("task", tasks, TASKS), ("protocol", protocols, PROTOCOLS)):
    unknown = set(chosen) - set(valid)
    if unknown:
      raise SystemExit(f"Unknown {name}(s) {sorted(unknown)}; valid: {', '.join(valid)}.")
  on_cpu = jax.devices()[0].platform == "cpu"
  num_steps = args.steps or (2 if on_cpu else 10)
  memory_budget = (args.memory_budget_gb * 2**30 if args.memory_budget_gb
                   else default_memory_budget())
  load_at_start = os.getloadavg()[0]
  with tempfile.TemporaryDirectory(prefix="lra_synthetic_") as temp_dir:
    synthetic_root = args.synthetic_dir or temp_dir
    try:
      rows = [measure(args, task, protocol, synthetic_root, num_steps, memory_budget)
              for protocol in protocols for task in tasks]
    except (errors.ConfigError, errors.DataNotFoundError) as error:
      raise SystemExit(f"error: {error}") from None
  text = report(rows, args, num_steps, memory_budget, (load_at_start, os.getloadavg()[0]))
  print(text)
  if args.out:
    benchmark.write_report(args.out, text, [dataclasses.asdict(row) for row in rows])


if __name__ == "__main__":
  main()
