"""The attention suite: which cases run, in which order, and the run's JSON payload.

A case is one registered method with fixed hyper-parameters (its module's
defaults, the reference values), or one point of Spectraformer's
(feature_map x weight_matrix) grid, or a baseline that is no registered
method (`sdpa_cudnn`, `sdpa_xla`: `jax.nn.dot_product_attention`). Each case is
timed at every length and dtype in both modes (forward, forward+backward),
its error is measured against its reference at one small length, and
methods with a size knob are swept over it (`errors.KNOBS`).
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib
import json
import os
import platform
import subprocess
import sys
from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from lra_jax import attention
from lra_jax.benchmark import errors, timing

# O(n^2) memory: capped by --max_quadratic_length (their n x n matrices
# outgrow memory; softmax fwd+bwd at 16384 needs about 33 GB).
QUADRATIC = ("softmax", "kernelized", "synthesizer", "skein_nonorm", "sparse", "sdpa_xla")


class DotProductAttention(nn.Module):
  """`jax.nn.dot_product_attention` in the registry's module protocol (a baseline, not registered).

  Attributes:
    dropout_rate: unused (the protocol's first field).
    implementation: 'cudnn' (fused flash attention on NVIDIA GPUs; float16 and
      bfloat16 only) or 'xla'.
  """

  dropout_rate: float = 0.0
  implementation: str = "xla"

  @nn.compact
  def __call__(self, query, key, value, mask, *, deterministic: bool):
    del deterministic
    # Right-padded masks as lengths: the form the cuDNN kernel takes.
    lengths = jnp.sum(mask, axis=-1, dtype=jnp.int32)
    return jax.nn.dot_product_attention(query, key, value, key_value_seq_lengths=lengths,
                                        implementation=self.implementation)


BASELINES = {"sdpa_cudnn": "cudnn", "sdpa_xla": "xla"}


@dataclasses.dataclass(frozen=True)
class Case:
  """One thing to measure.

  Attributes:
    label: its name in tables and plots.
    method: registered method name, or a key of `BASELINES`.
    hyperparameters: module fields set (on top of the module's defaults).
    reference: the exact attention its error is measured against.
  """

  label: str
  method: str
  hyperparameters: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  reference: str = "softmax"

  @property
  def quadratic(self) -> bool:
    return self.method in QUADRATIC

  def module(self, **overrides: Any) -> nn.Module:
    if self.method in BASELINES:
      return DotProductAttention(implementation=BASELINES[self.method])
    return attention.get(self.method)(**{**self.hyperparameters, **overrides})


def spectraformer_grid() -> list[tuple[str, str]] | None:
  """Every (feature_map, weight_matrix) pair, read from their modules; None if they are absent."""
  try:
    component_functions = importlib.import_module("lra_jax.attention.component_functions")
    weight_matrices = importlib.import_module("lra_jax.attention.weight_matrices")
    maps = tuple(component_functions.COMPONENT_FUNCTIONS)
    matrices = tuple(weight_matrices.WEIGHT_MATRICES)
  except (ImportError, AttributeError):
    return None
  if "spectraformer" not in attention.names():
    return None
  return [(feature_map, matrix) for feature_map in maps for matrix in matrices]


def build_cases(methods: Sequence[str], *, grid: bool = False, small_inputs: bool = False,
                log: Callable[[str], None] = print) -> list[Case]:
  """Cases for `methods` (registered names or `BASELINES` keys), plus Spectraformer's grid.

  `small_inputs` starts every method from its registry `small_input_kwargs`
  (for smoke runs at lengths of a few dozen tokens).
  """
  cases = []
  for method in methods:
    if method in BASELINES:
      cases.append(Case(method, method, {}, "softmax"))
      continue
    entry = attention.get_method(method)
    hyperparameters = dict(entry.small_input_kwargs) if small_inputs else {}
    cases.append(Case(method, method, hyperparameters,
                      errors.reference_name(method, hyperparameters)))
  if grid:
    pairs = spectraformer_grid()
    if pairs is None:
      log("--spectraformer_grid: spectraformer, component_functions.COMPONENT_FUNCTIONS or "
          "weight_matrices.WEIGHT_MATRICES is missing; grid skipped.")
    else:
      base = dict(attention.get_method("spectraformer").small_input_kwargs) if small_inputs else {}
      defaults = attention.default_hyperparameters("spectraformer")
      for feature_map, matrix in pairs:
        if (feature_map, matrix) == (defaults.get("feature_map"), defaults.get("weight_matrix")) \
            and "spectraformer" in methods:
          continue  # already the plain `spectraformer` case
        hyperparameters = {**base, "feature_map": feature_map, "weight_matrix": matrix}
        cases.append(Case(f"spectraformer:{feature_map}/{matrix}", "spectraformer",
                          hyperparameters, errors.reference_name("spectraformer", hyperparameters)))
  return cases


def default_methods() -> list[str]:
  """Every registered method, plus cuDNN's fused attention when a GPU is there."""
  methods = attention.names()
  if jax.default_backend() == "gpu":
    methods.append("sdpa_cudnn")
  return methods


@dataclasses.dataclass(frozen=True)
class Shape:
  batch: int = 4
  heads: int = 2
  head_dim: int = 32


def _failure(case: Case, length: int, dtype: str, mode: str, error: BaseException) -> dict:
  return {"name": case.label, "length": length, "dtype": dtype, "mode": mode,
          "error": f"{type(error).__name__}: {error}"[:500]}


def run_timings(cases: Sequence[Case], lengths: Sequence[int], dtypes: Sequence[str],
                shape: Shape, *, repeats: int, warmup: int, max_quadratic_length: int,
                modes: Sequence[str] = timing.MODES, log: Callable[[str], None] = print,
                ) -> tuple[list[timing.Timing], list[dict]]:
  """Times every case; lengths ascend, and a failure stops the longer lengths of that case/dtype/mode."""
  timings, failures = [], []
  for case in cases:
    for dtype in dtypes:
      stopped = set()
      for length in sorted(lengths):
        if case.quadratic and length > max_quadratic_length:
          continue
        q, k, v, mask = timing.random_inputs(length, shape.batch, shape.heads, shape.head_dim,
                                             jnp.dtype(dtype))
        try:
          runner = timing.init_runner(case.module(), q, k, v, mask)
        except Exception as error:  # a case that cannot run at this length must not stop the suite
          failures.append(_failure(case, length, dtype, "init", error))
          log(f"  {case.label:32s} {dtype:8s} {length:6d} init failed: {failures[-1]['error']}")
          continue
        for mode in modes:
          if mode in stopped:
            continue
          try:
            t = timing.time_call(case.label, getattr(runner, mode), (runner.params, q, k, v),
                                 length, repeats=repeats, warmup=warmup, mode=mode, dtype=dtype)
          except Exception as error:
            failures.append(_failure(case, length, dtype, mode, error))
            stopped.add(mode)
            log(f"  {case.label:32s} {dtype:8s} {length:6d} {mode:16s} failed: "
                f"{failures[-1]['error']}")
            continue
          timings.append(t)
          log(f"  {case.label:32s} {dtype:8s} {length:6d} {mode:16s} {t.median_ms:10.2f} ms "
              f"{(t.peak_bytes or 0) / 2**20:9.1f} MiB")
        del runner, q, k, v
  return timings, failures


def run_errors(cases: Sequence[Case], dtypes: Sequence[str], shape: Shape, *, length: int,
               seeds: Sequence[int], input_scale: float, attention_matrix: bool,
               log: Callable[[str], None] = print) -> tuple[list[errors.ErrorResult], list[dict]]:
  """Approximation errors of every case against its reference, per dtype."""
  results, failures, cache = [], [], {}
  for case in cases:
    try:
      found = errors.measure_errors(
          case.label, case.module, case.reference, case.hyperparameters, length=length,
          batch=shape.batch, heads=shape.heads, head_dim=shape.head_dim, dtypes=dtypes,
          seeds=seeds, input_scale=input_scale, attention_matrix=attention_matrix, cache=cache)
    except Exception as error:
      failures.append(_failure(case, length, ",".join(dtypes), "error", error))
      log(f"  {case.label:32s} error measurement failed: {failures[-1]['error']}")
      continue
    for result in found:
      note = errors.NOT_APPROXIMATIONS.get(case.method, "")
      if note:
        result = dataclasses.replace(result, note="; ".join(filter(None, (note, result.note))))
      results.append(result)
      matrix = "–" if result.matrix_error is None else f"{result.matrix_error:.3g}"
      log(f"  {case.label:32s} {result.dtype:8s} vs {case.reference:22s} output "
          f"{result.mean:.3g} ± {result.std:.2g}, matrix {matrix}")
  return results, failures


def run_sweep(cases: Sequence[Case], values: Sequence[int], shape: Shape, *, length: int,
              seeds: Sequence[int], input_scale: float, log: Callable[[str], None] = print,
              ) -> tuple[list[dict], list[dict]]:
  """Output error (float32) against the size knob of every plain case that has one."""
  rows, failures, cache = [], [], {}
  for case in cases:
    knob = errors.KNOBS.get(case.method)
    if knob is None or case.label != case.method:
      continue
    for value in sorted(v for v in values if v <= length):
      try:
        [result] = errors.measure_errors(
            case.label, lambda: case.module(**{knob: value}), case.reference,
            {**case.hyperparameters, knob: value}, length=length, batch=shape.batch,
            heads=shape.heads, head_dim=shape.head_dim, dtypes=("float32",), seeds=seeds,
            input_scale=input_scale, attention_matrix=False, cache=cache)
      except Exception as error:
        failures.append(_failure(case, length, "float32", f"sweep {knob}={value}", error))
        log(f"  {case.label:32s} {knob}={value} failed: {failures[-1]['error']}")
        continue
      rows.append({"name": case.label, "knob": knob, "value": value,
                   "reference": case.reference, "mean": result.mean, "std": result.std,
                   "output_errors": list(result.output_errors)})
      log(f"  {case.label:32s} {knob}={value:5d} error {result.mean:.3g} ± {result.std:.2g}")
  return rows, failures


def run_torch(lengths: Sequence[int], dtypes: Sequence[str], shape: Shape, *, repeats: int,
              warmup: int, max_quadratic_length: int, log: Callable[[str], None] = print) -> dict:
  """Times the PyTorch references in a child process (see `torch_references`); its JSON payload."""
  command = [sys.executable, "-m", "lra_jax.benchmark.torch_references",
             f"--lengths={','.join(map(str, lengths))}", f"--dtypes={','.join(dtypes)}",
             f"--batch={shape.batch}", f"--heads={shape.heads}", f"--head_dim={shape.head_dim}",
             f"--repeats={repeats}", f"--warmup={warmup}",
             f"--max_quadratic_length={max_quadratic_length}"]
  log("PyTorch references: " + " ".join(command[1:]))
  # The child's progress goes straight to our stderr; its JSON comes on stdout.
  completed = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=False)
  if completed.returncode:
    raise SystemExit("The PyTorch references failed (see above; is the extra installed? "
                     "`pip install -e .[torch-reference]`).")
  return json.loads(completed.stdout.strip().splitlines()[-1])


def environment(command: Sequence[str] | None = None) -> dict:
  """Where and when: device, versions, CPU, date, the command line, the malloc tunables.

  GLIBC_TUNABLES is recorded because it changes CPU times a lot: `run.sh`
  turns on transparent huge pages for malloc (see there), and without them
  each call page-faults its scratch memory afresh.
  """
  device = jax.devices()[0]
  return {"date": datetime.date.today().isoformat(), "platform": device.platform,
          "device_kind": device.device_kind, "device_count": jax.device_count(),
          "jax": jax.__version__, "machine": platform.machine(),
          "processor": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
          "python": platform.python_version(),
          "command": " ".join(command) if command is not None else None,
          "glibc_tunables": os.environ.get("GLIBC_TUNABLES")}


def payload(*, settings: Mapping[str, Any], cases: Sequence[Case], timings, errors_found,
            sweep, failures, torch: dict | None, command: Sequence[str] | None = None) -> dict:
  """The run as one JSON-able dict (the input of `report.attention_markdown` and `plots`)."""
  return {
      "environment": environment(command),
      "settings": dict(settings),
      "cases": [{"label": c.label, "method": c.method, "hyperparameters": dict(c.hyperparameters),
                 "reference": c.reference, "quadratic": c.quadratic,
                 "approximation": c.method not in errors.NOT_APPROXIMATIONS} for c in cases],
      "timings": [dataclasses.asdict(t) for t in timings],
      "errors": [{**dataclasses.asdict(e), "mean": e.mean, "std": e.std} for e in errors_found],
      "sweep": list(sweep),
      "failures": list(failures),
      "torch": torch,
  }
