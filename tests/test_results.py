"""Published LRA numbers (package data) and the results table over training runs."""

from __future__ import annotations

import json
import statistics

import pytest

from lra_jax import attention, base_config, errors, published, results

# Transcribed by hand from the reference notes, independently of the JSON files:
# (source, method as published, task) -> accuracy, or (accuracy, std).
SPOT_CHECKS = {
    ("lra_official", "Transformer", "listops"): 36.37,
    ("lra_official", "Transformer", "pathx"): "FAIL",
    ("lra_official", "Sparse Trans.", "retrieval"): 59.59,
    ("lra_official", "Performer", "pathfinder"): 77.05,
    ("lra_official", "Sinkhorn Trans.", "image"): 41.23,
    ("lra_official", "TLB", "text"): 81.88,
    ("skyformer", "Self-Attention", "text"): 61.95,
    ("skyformer", "Skyformer", "retrieval"): 82.06,
    ("skyformer", "Reformer", "image"): 48.87,
    ("skyformer", "Kernelized Attention", "pathfinder"): 70.73,
    ("skeinformer", "Skeinformer", "listops"): 38.73,
    ("skeinformer", "V-Mean", "text"): 65.29,
    ("skeinformer", "Informer w/ padding mask", "pathfinder"): 62.51,
    ("skeinformer", "Skeinformer w/o row normalization", "image"): 37.06,
    ("nystromformer", "Nyströmformer", "image"): 41.58,
    ("nystromformer", "Standard (softmax)", "pathfinder"): 74.16,
    ("nystromformer", "Performer", "listops"): 18.80,
    ("spectraformer", "OT", "text"): (59.72, 1.07),
    ("spectraformer", "OPRF-FastFoodL", "retrieval"): (78.65, 1.94),
    ("spectraformer", "PosRF-SORF", "listops"): (21.91, 5.98),
    ("spectraformer", "SADERF-QMC", "pathfinder"): (67.32, 0.40),
    ("spectraformer_2024_readme", "OPRF-MM", "text"): (60.40, 0.85),
    ("spectraformer_2024_readme", "PosRF-SORF", "retrieval"): (67.10, 1.11),
}
# Published averages, transcribed the same way.
SPOT_AVERAGES = {("lra_official", "BigBird"): 55.01, ("lra_official", "Sinkhorn Trans."): 51.29,
                 ("skyformer", "Skyformer"): 59.39, ("skeinformer", "Standard"): 57.50,
                 ("nystromformer", "Nyströmformer"): 58.95, ("spectraformer", "Informer"): 53.08}


def _entry(source_id, method):
  (row,) = [e for e in published.load(source_id)["entries"] if e["method"] == method]
  return row


def test_every_source_loads_with_its_fields():
  assert published.sources() == ["lra_official", "nystromformer", "skeinformer", "skyformer",
                                 "spectraformer", "spectraformer_2024_readme"]
  for source_id in published.sources():
    data = published.load(source_id)
    assert {"paper", "authors", "venue", "citation", "table"} <= set(data["source"])
    assert data["protocol"] in base_config.PROTOCOLS
    assert data["protocol_notes"] and set(data["average_over"]) <= set(data["tasks"])
    for row in data["entries"]:
      assert set(row["accuracy"]) == set(data["tasks"]), (source_id, row["method"])
      assert set(row.get("std", {})) <= set(row["accuracy"])
  assert all(e.protocol == "official" for e in published.entries(protocol="official"))
  assert len(published.entries()) == 13 + 5 + 16 + 9 + 25 + 18


@pytest.mark.parametrize("key", sorted(SPOT_CHECKS))
def test_numbers_are_copied_exactly(key):
  source_id, method, task = key
  row = _entry(source_id, method)
  expected = SPOT_CHECKS[key]
  if isinstance(expected, tuple):
    assert (row["accuracy"][task], row["std"][task]) == expected
  else:
    assert row["accuracy"][task] == expected


def test_published_averages_are_copied_and_are_the_task_means():
  for (source_id, method), average in SPOT_AVERAGES.items():
    assert _entry(source_id, method)["average"] == average
  for source_id in published.sources():
    data = published.load(source_id)
    exceptions = data.get("average_exceptions", {})
    for row in data["entries"]:
      mean = statistics.fmean(row["accuracy"][t] for t in data["average_over"])
      if row["method"] in exceptions:
        continue
      # Averages of unrounded task accuracies: each of the two roundings is worth 0.005.
      assert abs(mean - row["average"]) <= 0.01 + 1e-9, (source_id, row["method"], mean)
  # The one documented exception: the README's Sinkhorn average is not its row mean.
  sinkhorn = _entry("lra_official", "Sinkhorn Trans.")
  assert list(published.load("lra_official")["average_exceptions"]) == ["Sinkhorn Trans."]
  assert statistics.fmean(sinkhorn["accuracy"][t] for t in published.TASKS) == pytest.approx(
      51.476)


def test_every_registry_name_and_setting_exists():
  registered = set(attention.names())
  for entry in published.entries():
    if entry.attention is None:
      assert entry.source_id == "lra_official" and entry.method in ("IGLOO", "TLB")
      continue
    assert entry.attention in registered, (entry.source_id, entry.method)
    fields = set(attention.default_hyperparameters(entry.attention))
    used = set(entry.attention_kwargs) | set(entry.reference_options)
    for task_kwargs in entry.task_attention_kwargs.values():
      used |= set(task_kwargs)
    assert used <= fields, (entry.source_id, entry.method, used - fields)


def test_registry_names_of_the_official_rows():
  names = {e.method: e.attention for e in published.entries(protocol="official")}
  assert names["Transformer"] == "softmax" and names["Sparse Trans."] == "sparse"
  assert names["Linear Trans."] == "linear_transformer" and names["Local Att"] == "local"
  assert names["Sinkhorn Trans."] == "sinkhorn"


def test_spectraformer_rows_name_their_feature_map_and_weight_matrix():
  (row,) = [e for e in published.entries() if e.source_id == "spectraformer"
            and e.method == "OPRF-OR"]
  assert row.attention == "spectraformer"
  assert (row.attention_kwargs["feature_map"], row.attention_kwargs["weight_matrix"]) == (
      "oprf", "orf")


# ------------------------------------------------------------------ collecting runs

SPECTRA = {"feature_map": "oprf", "weight_matrix": "mm", "nb_features": 128}


def _write_run(workdir, task, method, protocol, seed, best, final=None, kwargs=None,
               num_train_steps=100, with_best=True):
  workdir.mkdir(parents=True)

  def metrics(accuracy):
    return {"validation": {"accuracy": accuracy, "loss": 1.0},
            "test": {"accuracy": accuracy, "loss": 1.0}}

  report = {"task": task, "attention": method, "protocol": protocol,
            "final": {"step": 100, **metrics(best if final is None else final)},
            "test_majority_class_accuracy": 0.1}
  if with_best:
    report["best"] = {"step": 50, **metrics(best)}
  (workdir / "results.json").write_text(json.dumps(report))
  config = {"seed": seed, "task": task, "protocol": protocol,
            "data": {"data_dir": f"/data/{seed}"},
            "model": {"attention": method, "attention_kwargs": kwargs or {}},
            "train": {"num_train_steps": num_train_steps}}
  (workdir / "config.json").write_text(json.dumps(config))


@pytest.fixture()
def runs_dir(tmp_path):
  """softmax (official) on every task with seeds 0-2; spectraformer OPRF-MM
  (pytorch_lra) on ListOps with 2 seeds that also differ in their step count."""
  for t, task in enumerate(published.TASKS):
    for seed in range(3):
      _write_run(tmp_path / "sweep" / f"{task}_softmax_{seed}", task, "softmax", "official",
                 seed, best=0.30 + 0.1 * t + 0.01 * seed, final=0.2)
  _write_run(tmp_path / "other" / "a", "listops", "spectraformer", "pytorch_lra", 0, 0.37,
             kwargs=SPECTRA)
  _write_run(tmp_path / "other" / "b", "listops", "spectraformer", "pytorch_lra", 1, 0.39,
             kwargs=SPECTRA, num_train_steps=200, with_best=False)
  return tmp_path


def test_runs_are_grouped_with_mean_and_sample_std(runs_dir):
  runs = results.find_runs([runs_dir / "sweep", runs_dir / "other"])
  assert len(runs) == 17
  assert len(results.find_runs([runs_dir / "other" / "a" / "results.json"])) == 1
  softmax, spectra = results.group_runs(runs)
  assert (softmax.protocol, softmax.attention, spectra.attention) == (
      "official", "softmax", "spectraformer")
  text = softmax.cells["text"]
  assert text.mean == pytest.approx(41.0) and text.std == pytest.approx(1.0)
  mean, std = softmax.average()
  assert mean == pytest.approx(statistics.fmean([31.0, 41.0, 51.0, 61.0, 71.0]))
  # Per-seed averages 50, 51, 52: sample std 1.
  assert std == pytest.approx(1.0)
  assert softmax.seeds == [0, 1, 2]
  assert spectra.cells["listops"].mean == pytest.approx(38.0)
  assert spectra.average() == (None, None)  # one task only
  final = results.group_runs(results.find_runs([runs_dir / "sweep"], checkpoint="final"))
  assert final[0].cells["image"].mean == pytest.approx(20.0)


def test_markdown_table_is_well_formed_with_published_rows_beside(runs_dir):
  runs = results.find_runs([runs_dir])
  report = results.markdown_report(runs)
  tables = [line for line in report.splitlines() if line.startswith("|")]
  header = tables[0]
  assert header.startswith("| method | settings | ListOps | Text | Retrieval | Image | Pathfinder")
  def columns(line):
    return line.count("|") - line.count("\\|")

  assert all(columns(line) == columns(header) for line in tables), report
  assert "## Protocol `official`" in report and "## Protocol `pytorch_lra`" in report
  (ours,) = [line for line in tables if line.startswith("| softmax |")]
  assert "| 41.00 ± 1.00 (3) |" in ours and "| 51.00 ± 1.00 |" in ours
  # The official Transformer row sits beside softmax; OPRF-MM rows of both
  # Spectraformer tables beside the spectraformer group, and no other
  # Spectraformer variant.
  assert any(line.startswith("| ↳ Transformer |") and "36.37" in line for line in tables)
  spectra = [line for line in tables if "Spectraformer README" in line]
  assert len(spectra) == 2 and all(line.startswith("| ↳ OPRF-MM |") for line in spectra)
  assert "feature_map=oprf, weight_matrix=mm" in report
  # The spectraformer runs differ in more than their seed, and one lacks a best checkpoint.
  assert "differ in train.num_train_steps" in report
  assert "no best checkpoint" in report
  everything = results.markdown_report(runs, published_rows="all")
  assert "| PosRF-SORF |" in everything and "59.89 (3 tasks)" in everything


def test_command_writes_markdown_and_png(runs_dir, capsys):
  out = runs_dir / "report" / "lra.md"
  assert results.main([str(runs_dir / "sweep"), f"--out={out}"]) == 0
  printed = capsys.readouterr().out
  assert printed.startswith("# LRA results") and out.read_text() == printed
  png = out.with_suffix(".png").read_bytes()
  assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 1000


def test_no_results_says_where_it_looked_and_how_to_train(tmp_path, capsys):
  (tmp_path / "empty").mkdir()
  with pytest.raises(errors.DataNotFoundError, match="python -m lra_jax.train") as error:
    results.find_runs([tmp_path / "empty", tmp_path / "missing"])
  assert str(tmp_path / "missing") in str(error.value) and "does not exist" in str(error.value)
  assert results.main([str(tmp_path / "empty")]) == 2
  message = capsys.readouterr().err
  assert message.startswith("error: No results to report") and str(tmp_path / "empty") in message


def test_published_match_needs_the_defining_settings():
  (oprf_mm,) = [e for e in published.entries() if e.source_id == "spectraformer"
                and e.method == "OPRF-MM"]
  assert oprf_mm.matches("spectraformer", "pytorch_lra", {**SPECTRA, "kernel": "gaussian"},
                         "text")
  assert not oprf_mm.matches("spectraformer", "pytorch_lra",
                             {**SPECTRA, "feature_map": "posrf"}, "text")
  assert not oprf_mm.matches("spectraformer", "official", SPECTRA, "text")
  (local,) = [e for e in published.entries() if e.method == "Local Att"]
  assert local.matches("local", "official", {"block_size": 64}, "image")
  assert not local.matches("local", "official", {"block_size": 64}, "text")
  assert local.five_task_average == 46.06
  (older,) = [e for e in published.entries() if e.source_id == "spectraformer_2024_readme"
              and e.method == "OPRF-MM"]
  assert older.average == 59.86 and older.five_task_average is None  # a three-task average
