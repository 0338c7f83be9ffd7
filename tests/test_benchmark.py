"""The benchmark measures what it says (no timing thresholds here).

The command itself runs once, tiny (2 methods, lengths 64 and 128, one
repeat, float32), and its outputs are checked for form; the arithmetic of
the report (exponents, speed-ups, ratios) is checked on synthetic timings.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import pathlib

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import pytest

from lra_jax import attention, benchmark
from lra_jax.attention import registry
from lra_jax.benchmark import cli, errors, report, suite, timing
from lra_jax.benchmark.timing import Timing


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
  out = tmp_path_factory.mktemp("benchmark")
  data = cli.main(["attention", "--methods=softmax,performer", "--lengths=64,128", "--repeats=1",
                   "--dtypes=float32", "--small_inputs", "--error_length=64", "--error_seeds=2",
                   "--knob_values=8,16", f"--out={out}", "--name=tiny"])
  return out, data


def test_tiny_run_writes_json_markdown_and_plots(tiny_run):
  out, data = tiny_run
  assert json.loads((out / "tiny.json").read_text()) == json.loads(json.dumps(data))
  timings = [Timing(**t) for t in data["timings"]]
  assert {(t.name, t.length, t.mode) for t in timings} == {
      (name, length, mode) for name in ("softmax", "performer") for length in (64, 128)
      for mode in ("forward", "forward_backward")}
  assert all(t.median_ms > 0 and t.peak_bytes > 0 and t.repeats == 1 for t in timings)
  assert not data["failures"]
  assert {(e["name"], e["dtype"]) for e in data["errors"]} == {("softmax", "float32"),
                                                              ("performer", "float32")}
  assert [(row["name"], row["knob"], row["value"]) for row in data["sweep"]] == [
      ("performer", "nb_features", 8), ("performer", "nb_features", 16)]

  markdown = (out / "tiny.md").read_text()
  tunables = os.environ.get("GLIBC_TUNABLES")
  assert data["environment"]["glibc_tunables"] == tunables
  assert f"GLIBC_TUNABLES: `{tunables or 'unset'}`." in markdown.splitlines()[2]
  tables = _markdown_tables(markdown)
  assert len(tables) >= 7  # 2 times, 2 speed-ups, memory, memory ratio, errors, sweep
  for table in tables:
    widths = {row.count("|") for row in table}
    assert len(widths) == 1, table  # every row has the header's number of cells
    assert set(table[1].replace("|", "").split()) <= {"---", "---:"}
  for kind in ("time", "memory", "error"):
    assert f"(tiny_{kind}.png)" in markdown
    image = plt.imread(out / f"tiny_{kind}.png")
    assert image.ndim == 3 and min(image.shape[:2]) > 100


def _markdown_tables(markdown: str) -> list[list[str]]:
  tables, current = [], []
  for line in markdown.splitlines() + [""]:
    if line.startswith("|"):
      current.append(line)
    elif current:
      tables.append(current)
      current = []
  return tables


def test_exact_methods_have_zero_error_against_themselves(tiny_run):
  _, data = tiny_run
  [softmax] = [e for e in data["errors"] if e["name"] == "softmax"]
  assert softmax["reference"] == "softmax"
  assert list(softmax["output_errors"]) == [0.0, 0.0] and softmax["matrix_error"] == 0.0
  [kernelized] = errors.measure_errors(
      "kernelized", attention.get("kernelized"), "kernelized", {}, length=48, batch=2,
      head_dim=8, seeds=(0,))
  assert kernelized.output_errors == (0.0,) and kernelized.matrix_error == 0.0
  [performer] = [e for e in data["errors"] if e["name"] == "performer"]
  assert min(performer["output_errors"]) > 0 and performer["matrix_error"] > 0


def test_references_of_the_methods():
  assert errors.reference_name("softmax") == "softmax"
  assert errors.reference_name("performer") == "softmax"
  assert errors.reference_name("kernelized") == "kernelized"
  assert errors.reference_name("skyformer") == "kernelized"
  if "spectraformer" in attention.names():
    assert errors.reference_name("spectraformer") == "kernelized_normalized"
    assert errors.reference_name("spectraformer", {"kernel": "softmax"}) == "softmax"
  if "rmfa" in attention.names():
    assert errors.reference_name("rmfa") == "dot_kernel"


def test_registry_stores_what_a_method_approximates():
  assert attention.get_method("softmax").approximates == "softmax"

  def toy_attention(query, key, value, mask, *, rng=None):
    return value

  try:
    registry.register("toy", toy_attention, attention.get("softmax"), approximates="kernelized")
    assert attention.get_method("toy").approximates == "kernelized"
    assert errors.reference_name("toy") == "kernelized"
  finally:
    registry._REGISTRY.pop("toy", None)


def _inputs(length=40, seed=0):
  q, k, v, mask = timing.random_inputs(length, batch=2, heads=2, head_dim=8, seed=seed)
  return q, k, v, mask.at[1, 29:].set(False)


def test_normalised_gaussian_reference_is_kernelized_over_its_row_sums():
  q, k, v, mask = _inputs()
  out = errors.kernelized_normalized_attention(q, k, v, mask)
  weighted = attention.kernelized_attention(q, k, v, mask)
  row_sums = attention.kernelized_attention(q, k, jnp.ones_like(v), mask)
  np.testing.assert_allclose(out, weighted / row_sums, rtol=2e-5, atol=1e-6)


def test_dot_kernel_reference_with_exp_and_no_prescaling_is_softmax():
  # exp(q.k / sqrt(d)) normalised over the keys is softmax; degree 30 makes
  # the truncation negligible for |q.k| / sqrt(d) of a few units.
  q, k, v, mask = _inputs()
  out = errors.dot_kernel_attention(q, k, v, mask, {"dot_kernel": "exp", "ppsbn": False,
                                                    "max_degree": 30})
  np.testing.assert_allclose(out, attention.softmax_attention(q, k, v, mask), rtol=1e-4, atol=1e-5)


def test_implied_attention_matrix_is_the_softmax_weights_and_none_when_not_linear():
  q, k, v, mask = _inputs()
  matrix = errors.implied_attention_matrix(
      lambda value: attention.softmax_attention(q, k, value, mask), v)
  logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(8.0)
  weights = jax.nn.softmax(jnp.where(mask[:, None, None, :], logits, -1e10), axis=-1)
  np.testing.assert_allclose(matrix, weights, atol=1e-6)
  assert errors.implied_attention_matrix(lambda value: value ** 2, v) is None


def test_relative_error():
  assert errors.relative_error(jnp.array([3.0, 4.0]), jnp.array([3.0, 4.0])) == 0.0
  np.testing.assert_allclose(errors.relative_error(jnp.array([3.0, 5.0]), jnp.array([0.0, 4.0])),
                             math.sqrt(10) / 4)


def test_softmax_timings_are_positive_and_grow_with_length():
  # 64x more logits at 8x the length: far apart enough to beat timing noise.
  for mode in timing.MODES:
    short = benchmark.time_attention("softmax", 128, repeats=3, mode=mode)
    long = benchmark.time_attention("softmax", 1024, repeats=3, mode=mode)
    assert 0 < short.median_ms < long.median_ms, mode
    assert short.min_ms <= short.q1_ms <= short.median_ms <= short.q3_ms <= short.max_ms
    if mode == "forward_backward":  # the backward pass keeps the n x n weights
      assert long.peak_bytes > 16 * short.peak_bytes
    assert (short.mode, short.dtype, short.repeats) == (mode, "float32", 3)


def test_time_attention_passes_hyperparameters_to_the_module():
  few = benchmark.time_attention("nystrom", 256, hyperparameters={"num_landmarks": 8}, repeats=1)
  many = benchmark.time_attention("nystrom", 256, hyperparameters={"num_landmarks": 64}, repeats=1)
  assert many.peak_bytes > few.peak_bytes


def test_methods_with_integer_constants_are_timed():
  # BigBird's fixed random-block pattern is an int32 constant: not differentiated.
  t = benchmark.time_attention("bigbird", 64, hyperparameters={"block_size": 8}, repeats=1,
                               dtype=jnp.bfloat16)
  assert t.median_ms > 0 and t.dtype == "bfloat16"


def _synthetic():
  # softmax: 1 ms x (n / 1024)^2, capped at 8192; a linear method: 2 ms x n / 1024,
  # except 16384 (a little worse than linear); memory likewise.
  timings = []
  for n in (1024, 4096, 8192):
    timings.append(Timing("softmax", n, (n / 1024) ** 2, peak_bytes=100 * (n // 1024) ** 2))
  for n, ms in ((1024, 2.0), (4096, 8.0), (8192, 16.0), (16384, 40.0)):
    timings.append(Timing("linear", n, ms, peak_bytes=50 * n // 1024))
  return timings


def test_scaling_exponent_from_synthetic_timings():
  timings = _synthetic()
  exponent = report.scaling_exponent(timings, "linear", 4096, 16384)
  np.testing.assert_allclose(exponent, math.log2(40.0 / 8.0) / 2)
  np.testing.assert_allclose(report.scaling_exponent(timings, "softmax", 1024, 8192), 2.0)
  assert report.scaling_exponent(timings, "softmax", 4096, 16384) is None
  np.testing.assert_allclose(report.scaling_ratio(timings, "linear", 4096, 16384), 5.0)
  assert report.exponent_lengths([1024, 4096, 8192, 16384]) == (4096, 16384)
  assert report.exponent_lengths([64, 128, 256]) == (64, 256)
  assert report.exponent_lengths([64]) is None


def test_speedups_and_memory_ratios_from_synthetic_timings():
  timings = _synthetic()
  speedup = report.speedups(timings)
  assert speedup[("linear", 1024)] == (0.5, False)
  assert speedup[("linear", 4096)] == (16.0 / 8.0, False)
  assert speedup[("softmax", 8192)] == (1.0, False)
  # Softmax beyond 8192 is extrapolated as n^2: 64 ms x 4 at 16384.
  assert speedup[("linear", 16384)] == (256.0 / 40.0, True)
  assert ("linear", 16384) not in report.speedups(timings, extrapolate=False)
  memory = report.memory_ratios(timings)
  assert memory[("linear", 4096)] == (200 / 1600, False)
  assert memory[("linear", 16384)] == (800 / (6400 * 4), True)
  assert report.format_ratio(speedup[("linear", 16384)]) == "≈6.40x"
  table = report.grid(["linear"], [4096, 16384], report._ratio_cells(speedup))
  assert table.splitlines()[2] == "| linear | 2.00x | ≈6.40x |"


def test_markdown_table():
  timings = [Timing("a", 4096, 10.0), Timing("a", 16384, 44.0), Timing("b", 4096, 1.0)]
  table = benchmark.markdown_table(timings, lambda t: f"{t.median_ms:.0f}")
  assert table.splitlines()[0] == "| length | a | b |"
  assert table.splitlines()[2] == "| 4096 | 10 | 1 |"
  assert table.splitlines()[3] == "| 16384 | 44 | – |"


def test_torch_comparison_is_reported_as_ours_over_theirs():
  data = {"timings": [{"name": "nystrom", "length": 1024, "dtype": "float32",
                       "mode": "forward_backward", "median_ms": 30.0}],
          "torch": {"torch": "x", "threads": 2, "counterpart": {"pypi:nystrom-attention": "nystrom"},
                    "results": [{"name": "pypi:nystrom-attention", "length": 1024,
                                 "dtype": "float32", "mode": "forward_backward",
                                 "median_ms": 60.0}], "failures": []}}
  markdown = "\n".join(report.torch_section(data))
  assert "### float32: forward+backward, ours / theirs" in markdown
  assert "| pypi:nystrom-attention / nystrom | 0.50 (60.0) |" in markdown


def test_torch_reference_is_timed_or_its_absence_says_what_to_install():
  if importlib.util.find_spec("torch") is None:
    # Without the optional extra, --torch stops with the install command.
    with pytest.raises(SystemExit, match=r"pip install -e \.\[torch-reference\]"):
      suite.run_torch([64], ["float32"], suite.Shape(batch=2, heads=2, head_dim=8), repeats=1,
                      warmup=0, max_quadratic_length=64, log=lambda _: None)
    return
  from lra_jax.benchmark import torch_references
  import torch
  for mode in timing.MODES:
    times = torch_references.time_reference(torch_references.seed_softmax, 64, torch.float32, mode,
                                            batch=2, repeats=2)
    assert len(times) == 2 and min(times) > 0


def test_spectraformer_grid_cases(monkeypatch):
  pairs = suite.spectraformer_grid()
  assert len(pairs) == 5 * 10
  cases = suite.build_cases(["spectraformer"], grid=True)
  assert len(cases) == len(pairs)  # the default pair is the plain case
  assert len({c.label for c in cases}) == len(cases)
  assert {c.reference for c in cases} == {"kernelized_normalized"}
  monkeypatch.setattr(suite, "spectraformer_grid", lambda: None)
  logged = []
  assert [c.label for c in suite.build_cases(["softmax"], grid=True, log=logged.append)] == ["softmax"]
  assert "grid skipped" in logged[0]


def test_old_script_flags_are_translated():
  path = pathlib.Path(__file__).parents[1] / "benchmarks" / "attention.py"
  spec = importlib.util.spec_from_file_location("benchmarks_attention", path)
  script = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(script)
  assert script.translate(["--torch", "--out=benchmarks/results/attention_cpu.md"]) == [
      "attention", "--torch", "--out=benchmarks/results", "--name=attention_cpu"]


def _scaling_script():
  path = pathlib.Path(__file__).parents[1] / "benchmarks" / "scaling.py"
  spec = importlib.util.spec_from_file_location("benchmarks_scaling", path)
  script = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(script)
  return script


def test_scaling_calls_alternate_and_medians_are_per_call():
  script = _scaling_script()
  order = []

  def call(label, value):
    def run(seed):
      order.append((label, seed))
      return jnp.asarray(value)
    return run

  medians = script.interleaved_medians([call("short", 1), call("long", 2)], rounds=3, warmup=1)
  assert order == [("short", 0), ("long", 0), ("short", 1), ("long", 1), ("short", 2), ("long", 2),
                   ("short", 3), ("long", 3)]
  assert len(medians) == 2 and all(m >= 0 for m in medians)


def test_scaling_script_writes_its_table(tmp_path):
  out = tmp_path / "scaling.md"
  rows = _scaling_script().main(["--methods=performer,linformer", "--short=32", "--long=64",
                                 "--rounds=1", f"--out={out}"])
  assert [label for label, _, _ in rows] == ["performer", "linformer"]
  text = out.read_text()
  assert "| performer |" in text and "ratio (limit 2.2)" in text
  with pytest.raises(SystemExit):
    _scaling_script().main(["--methods=no_such_method"])
