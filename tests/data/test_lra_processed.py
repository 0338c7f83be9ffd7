"""Reading the PyTorch LRA harness's lra_processed pickles, and writing ours in their format.

Every file here is written by the test, in the format skyformer_skeinformer.md
§5 describes (plain `pickle.dump` of a list of dicts, as create_*.py does),
or by preprocess/convert_lra_processed.py.
"""

import importlib.util
import json
import logging
import os
import pathlib
import pickle
import pickletools
import warnings

import numpy as np
import pytest

from lra_jax import base_config, data, errors, trainer
from lra_jax.data import listops, lra_processed

_SCRIPT = pathlib.Path(__file__).resolve().parents[2] / "preprocess" / "convert_lra_processed.py"
_SPEC = importlib.util.spec_from_file_location("convert_lra_processed", _SCRIPT)
convert_script = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(convert_script)

SIZES = {"train": 7, "validation": 5, "test": 3}
NUM_CLASSES = {"listops": 10, "text": 2, "retrieval": 2, "image": 10, "pathfinder": 2}
# (stored length, longest content, largest id) of each task's rows, as the seed repos store them.
FORMATS = {"listops": (2048, 2000, 15), "text": (4096, 4000, 256), "retrieval": (4096, 4000, 256),
           "image": (1024, 1024, 255), "pathfinder": (1024, 1024, 255)}


def _rows(task, split, seed=0):
  """A split of `task` in the harness format: content, then zeros; pixel rows are whole images."""
  rng = np.random.default_rng([seed, list(SIZES).index(split)])
  length, longest, largest = FORMATS[task]
  pixels = task in lra_processed.PIXEL_TASKS

  def sequence():
    row = np.zeros(length, np.int32)
    size = longest if pixels else int(rng.integers(1, longest + 1))
    row[:size] = rng.integers(0 if pixels else 1, largest + 1, size)
    return row

  rows = []
  for _ in range(SIZES[split]):
    row = {"input_ids_0": sequence()}
    if task == "retrieval":
      row["input_ids_1"] = sequence()
    row["label"] = lra_processed.LABEL_TYPES[task](int(rng.integers(NUM_CLASSES[task])))
    rows.append(row)
  return rows


def _write_harness_files(directory, task, config, seed=0):
  """The three files as the seed repos' create_*.py write them; their rows by our split name."""
  os.makedirs(directory, exist_ok=True)
  written = {}
  for split in SIZES:
    written[split] = _rows(task, split, seed)
    with open(lra_processed.split_path(str(directory), task, config.data, split), "wb") as f:
      pickle.dump(written[split], f, protocol=3)
  return written


def _config(task, directory, protocol="pytorch_lra", **data_fields):
  config = base_config.get_config(task, "softmax", protocol)
  config.data.update({"source": "lra_processed", "lra_processed_dir": str(directory),
                      "batch_size": 4, "eval_batch_size": 4, "shuffle_buffer_size": 16,
                      **data_fields})
  return config


def _batches(dataset, n=None):
  iterator = dataset.as_numpy_iterator()
  return list(iterator) if n is None else [next(iterator) for _ in range(n)]


def _valid_rows(batches, name):
  return [row for b in batches for row, valid in zip(b[name], b["valid"]) if valid]


def _expected_ids(row, config, task):
  """What a stored row becomes: our ids, first max_length kept, padded to padded_length."""
  ids = row.astype(np.int32)
  if task in lra_processed.PIXEL_TASKS and not config.data.black_pixels_are_padding:
    ids = ids + 1
  ids = ids[:config.data.max_length]
  return np.pad(ids, (0, config.data.padded_length - len(ids)))


@pytest.mark.parametrize("task", lra_processed.TASKS)
def test_each_task_reads_its_files_in_the_harness_format(tmp_path, task):
  config = _config(task, tmp_path)
  written = _write_harness_files(tmp_path, task, config)
  datasets = data.get_datasets(config)
  keys = lra_processed.sequence_keys(task)
  for split in ("validation", "test"):  # the dev file is our validation split; file order
    batches = _batches(getattr(datasets, split))
    assert sorted(batches[0]) == sorted([*keys.values(), "targets", "valid"])
    for key, name in keys.items():
      assert all(b[name].shape == (4, config.data.padded_length) and b[name].dtype == np.int32
                 for b in batches)
      got = _valid_rows(batches, name)
      assert len(got) == SIZES[split]
      for row, stored in zip(got, written[split]):
        np.testing.assert_array_equal(row, _expected_ids(stored[key], config, task))
    assert [int(t) for t in np.concatenate([b["targets"][b["valid"]] for b in batches])] == [
        int(r["label"]) for r in written[split]]
  train = _batches(datasets.train, 2)
  stored_train = {tuple(_expected_ids(r["input_ids_0"], config, task)): int(r["label"])
                  for r in written["train"]}
  first = "inputs1" if task == "retrieval" else "inputs"
  for b in train:
    assert b["targets"].dtype == np.int32 and b["valid"].all()
    for row, target in zip(b[first], b["targets"]):
      assert stored_train[tuple(row)] == target


@pytest.mark.parametrize("black_pixels_are_padding", [False, True])
def test_pixels_map_to_our_ids_and_the_vocab_follows(tmp_path, black_pixels_are_padding):
  config = _config("image", tmp_path, black_pixels_are_padding=black_pixels_are_padding)
  written = _write_harness_files(tmp_path, "image", config)
  rows = _valid_rows(_batches(data.get_datasets(config).test), "inputs")
  stored = written["test"][0]["input_ids_0"]
  assert (stored == 0).any()  # black pixels are in the file
  offset = 0 if black_pixels_are_padding else 1
  np.testing.assert_array_equal(rows[0], stored + offset)
  assert max(r.max() for r in rows) < config.model.vocab_size == 257 - black_pixels_are_padding


def test_rows_are_cut_at_max_length_with_a_warning(tmp_path, caplog):
  config = _config("text", tmp_path, "official")  # keeps 1000 of the stored 4096
  written = _write_harness_files(tmp_path, "text", config)
  with caplog.at_level(logging.WARNING):
    rows = _valid_rows(_batches(data.get_datasets(config).validation), "inputs")
  assert rows[0].shape == (1000,)
  for row, stored in zip(rows, written["validation"]):
    np.testing.assert_array_equal(row, stored["input_ids_0"][:1000])
  cut = sum(bool(r["input_ids_0"][1000:].any()) for r in written["validation"])
  assert cut
  assert f"{cut} of 5 examples have input_ids_0 ids beyond data.max_length=1000" in caplog.text


def test_training_order_is_a_function_of_the_seed_and_resumes_exactly(tmp_path):
  config = _config("listops", tmp_path)
  _write_harness_files(tmp_path, "listops", config)

  def train_inputs(seed, start_step=0, steps=4):
    config.seed = seed
    train = data.get_datasets(config, start_step=start_step).train
    return [b["inputs"] for b in _batches(train, steps)]

  np.testing.assert_array_equal(train_inputs(0), train_inputs(0))
  assert not np.array_equal(train_inputs(0), train_inputs(1))
  np.testing.assert_array_equal(train_inputs(1, start_step=2, steps=2), train_inputs(1)[2:])


def test_two_processes_see_disjoint_shards_covering_each_split(tmp_path):
  config = _config("listops", tmp_path, batch_size=2, eval_batch_size=2)
  written = _write_harness_files(tmp_path, "listops", config)
  train_sizes = {0: 4, 1: 3}  # shard sizes of 7 examples; one step = one example per process
  seen = {"train": [], "validation": [], "test": []}
  for process in range(2):
    datasets = data.get_datasets(config, process_index=process, process_count=2)
    epoch = _batches(datasets.train, train_sizes[process])
    seen["train"].append([tuple(row) for b in epoch for row in b["inputs"]])
    for split in ("validation", "test"):
      seen[split].append([tuple(row) for row in
                          _valid_rows(_batches(getattr(datasets, split)), "inputs")])
  for split, (first, second) in seen.items():
    assert not set(first) & set(second)
    expected = [tuple(_expected_ids(r["input_ids_0"], config, "listops")) for r in written[split]]
    assert sorted(first + second) == sorted(expected)


def test_missing_files_say_what_was_expected_and_where_to_get_it(tmp_path):
  config = _config("pathfinder", tmp_path)
  _write_harness_files(tmp_path, "pathfinder", config)
  os.remove(tmp_path / "lra-pathfinder32-curv_contour_length_14.dev.pickle")
  with pytest.raises(errors.DataNotFoundError) as error:
    data.get_datasets(config)
  message = str(error.value)
  assert "lacks lra-pathfinder32-curv_contour_length_14.dev.pickle" in message
  assert lra_processed.DRIVE_URL in message
  assert "preprocess/convert_lra_processed.py write --config=configs/lra.py:pathfinder" in message
  config.data.lra_processed_dir = ""
  with pytest.raises(errors.DataNotFoundError, match="data.lra_processed_dir is not set"):
    data.get_datasets(config)


class _Payload:
  def __init__(self, function, *args):
    self.reduction = function, args

  def __reduce__(self):
    return self.reduction


def test_restricted_unpickler_refuses_code(tmp_path):
  target = tmp_path / "created_by_the_pickle"
  malicious = tmp_path / "lra-listops.train.pickle"
  for payload, name in [(_Payload(os.mkdir, str(target)), "mkdir"),
                        (_Payload(eval, f"__import__('os').mkdir({str(target)!r})"), "eval")]:
    malicious.write_bytes(pickle.dumps([{"input_ids_0": np.ones(4, np.int32), "label": payload}]))
    with pytest.raises(lra_processed.ForbiddenPickleError, match=name):
      lra_processed.load(str(malicious))
    assert not target.exists()
  pickle.loads(malicious.read_bytes())  # the payload is live: plain pickle runs it
  assert target.exists()


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_every_pickle_protocol_loads(tmp_path, protocol):
  rows = _rows("text", "test")
  path = tmp_path / "lra-text.test.pickle"
  path.write_bytes(pickle.dumps(rows, protocol=protocol))
  split = lra_processed.load(str(path))
  np.testing.assert_array_equal(split.inputs["input_ids_0"], [r["input_ids_0"] for r in rows])
  np.testing.assert_array_equal(split.labels, [r["label"] for r in rows])
  assert split.label_type == "int64"


def test_files_that_are_not_in_the_format_are_rejected(tmp_path):
  path = str(tmp_path / "bad.pickle")
  for content, message in [
      ({"input_ids_0": np.ones(3, np.int32)}, "list of dicts"),
      ([{"input_ids_0": np.ones(3, np.int32), "label": 0},
        {"input_ids_0": np.ones(4, np.int32), "label": 1}], "example 1's 'input_ids_0'"),
      ([{"input_ids_0": np.ones(3, np.float32), "label": 0}], "integer array"),
      ([{"input_ids_0": np.ones(3, np.int32), "label": 0.5}], "not an integer"),
  ]:
    with open(path, "wb") as f:
      pickle.dump(content, f)
    with pytest.raises(lra_processed.FormatError, match=message):
      lra_processed.load(path)


def test_pixel_files_must_hold_whole_images_of_gray_values(tmp_path):
  config = _config("pathfinder", tmp_path)
  written = _write_harness_files(tmp_path, "pathfinder", config)
  written["test"][0]["input_ids_0"][5] = 300
  with open(lra_processed.split_path(str(tmp_path), "pathfinder", config.data, "test"), "wb") as f:
    pickle.dump(written["test"], f)
  with pytest.raises(lra_processed.FormatError, match="outside 0..255"):
    lra_processed.read(config.data, "test", task="pathfinder", vocab_size=257, num_classes=2)
  config.data.pathfinder_resolution = 64  # 1024 values are not a 64x64 image
  _write_harness_files(tmp_path, "pathfinder", config)
  with pytest.raises(lra_processed.FormatError, match="rows of 1024 values, but a pathfinder "
                                                      "image has 4096 pixels"):
    lra_processed.read(config.data, "train", task="pathfinder", vocab_size=257, num_classes=2)


def test_ids_and_labels_must_fit_the_model(tmp_path):
  config = _config("listops", tmp_path)
  written = _write_harness_files(tmp_path, "listops", config)
  written["train"][2]["input_ids_0"][0] = 40  # the pytorch_lra ListOps table has 32 rows
  with open(lra_processed.split_path(str(tmp_path), "listops", config.data, "train"), "wb") as f:
    pickle.dump(written["train"], f)
  with pytest.raises(errors.ConfigError, match=r"model.vocab_size=32.*vocab_size=41"):
    data.get_datasets(config)
  config.model.vocab_size = 41
  config.model.num_classes = 3
  with pytest.raises(errors.ConfigError, match="model.num_classes=3"):
    data.get_datasets(config)
  config.data.source = "pickles"
  with pytest.raises(errors.ConfigError, match="tfds, lra_processed"):
    data.get_datasets(config)


def _listops_overrides(tfds_dir):
  return ["--set", f"data.data_dir={tfds_dir}", "--set", "data.generate_if_missing=True",
          "--set", "data.max_length=40", *[arg for field, value in dict(
              num_train=14, num_val=5, num_test=3, min_length=5, max_length=40, max_depth=3,
              max_args=3).items() for arg in ("--set", f"data.listops_generator.{field}={value}")]]


def test_converter_round_trip_gives_identical_batches(tmp_path):
  out = tmp_path / "lra_processed"
  argv = ["write", "--config=configs/lra.py:listops,softmax,pytorch_lra",
          f"--output_dir={out}", *_listops_overrides(tmp_path / "listops")]
  assert convert_script.main(argv) == 0
  names = sorted(p.name for p in out.iterdir())
  assert names == ["lra-listops.dev.pickle", "lra-listops.test.pickle", "lra-listops.train.pickle"]

  # The harness's exact format, loadable by numpy 1 and 2 alike without warnings.
  raw = (out / "lra-listops.train.pickle").read_bytes()
  globals_named = {arg for op, arg, _ in pickletools.genops(raw) if "GLOBAL" in op.name}
  assert globals_named == {"numpy.core.multiarray _reconstruct", "numpy.core.multiarray scalar",
                           "numpy ndarray", "numpy dtype"}
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    rows = pickle.loads(raw)
  assert len(rows) == 14 and sorted(rows[0]) == ["input_ids_0", "label"]
  assert all(r["input_ids_0"].dtype == np.int32 and r["input_ids_0"].shape == (2048,)
             and type(r["label"]) is np.int32 for r in rows)

  config = convert_script.load_config("configs/lra.py:listops,softmax,pytorch_lra")
  for assignment in _listops_overrides(tmp_path / "listops")[1::2]:
    convert_script.apply_override(config, assignment)
  config.data.update(batch_size=4, eval_batch_size=4, shuffle_buffer_size=16)
  ours = data.get_datasets(config)
  config.data.update(source="lra_processed", lra_processed_dir=str(out))
  theirs = data.get_datasets(config)
  for split, n in (("train", 6), ("validation", None), ("test", None)):
    for a, b in zip(_batches(getattr(ours, split), n), _batches(getattr(theirs, split), n),
                    strict=True):
      assert sorted(a) == sorted(b)
      for name in a:
        np.testing.assert_array_equal(a[name], b[name])

  assert convert_script.main(argv) == 0  # existing files are kept...
  assert (out / "lra-listops.train.pickle").read_bytes() == raw
  assert not [p for p in out.iterdir() if ".tmp" in p.name]


@pytest.mark.parametrize("task, black_pixels_are_padding",
                         [(task, False) for task in lra_processed.TASKS]
                         + [(task, True) for task in lra_processed.PIXEL_TASKS])
def test_written_files_read_back_as_the_examples(tmp_path, task, black_pixels_are_padding):
  config = _config(task, tmp_path)
  if task in lra_processed.PIXEL_TASKS:
    config.data.black_pixels_are_padding = black_pixels_are_padding
  rng = np.random.default_rng(3)
  length, longest, largest = FORMATS[task]
  pixels = task in lra_processed.PIXEL_TASKS
  # Our ids: pixel + 1 (1..256), the pixel itself (0..255), or 1..largest for tokens.
  low, high = (int(not black_pixels_are_padding), 256 + int(not black_pixels_are_padding)) \
      if pixels else (1, largest + 1)
  names = lra_processed.sequence_keys(task).values()
  examples = {split: [{**{name: rng.integers(low, high, longest if pixels
                                             else rng.integers(1, 50)).astype(np.int32)
                          for name in names},
                       "targets": np.int32(rng.integers(NUM_CLASSES[task]))}
                      for _ in range(size)] for split, size in SIZES.items()}
  for split, rows in examples.items():
    path = lra_processed.split_path(str(tmp_path), task, config.data, split)
    assert lra_processed.write(rows, path, task=task, data=config.data, chunk_size=2) == len(rows)
  with open(lra_processed.split_path(str(tmp_path), task, config.data, "test"), "rb") as f:
    stored = pickle.load(f)
  assert all(row["input_ids_0"].shape == (length,) for row in stored)
  assert {type(row["label"]) for row in stored} == {lra_processed.LABEL_TYPES[task]}
  batches = _batches(data.get_datasets(config).test)
  for name in names:
    for got, example in zip(_valid_rows(batches, name), examples["test"], strict=True):
      np.testing.assert_array_equal(got[:len(example[name])], example[name])
      assert not got[len(example[name]):].any()


def test_inspect_describes_files_without_running_them(tmp_path, capsys):
  config = _config("retrieval", tmp_path)
  _write_harness_files(tmp_path, "retrieval", config)
  path = lra_processed.split_path(str(tmp_path), "retrieval", config.data, "test")
  assert convert_script.main(["inspect", path]) == 0
  out = capsys.readouterr().out
  assert "3 examples, label type int32" in out
  assert "input_ids_0: int32 [4096]" in out and "input_ids_1: int32 [4096]" in out
  assert convert_script.main(["inspect", str(tmp_path / "missing.pickle")]) == 2
  assert "missing.pickle" in capsys.readouterr().err


def test_tasks_and_lengths_agree_with_the_configs():
  assert lra_processed.TASKS == tuple(base_config.TASKS)
  assert lra_processed.PIXEL_TASKS == base_config.PIXEL_TASKS
  dual = tuple(task for task, spec in base_config.TASKS.items() if spec.dual_encoder)
  assert lra_processed.DUAL_TASKS == dual
  for task in lra_processed.TASKS:
    config = base_config.get_config(task, "softmax", "pytorch_lra")
    assert lra_processed.harness_length(task, config.data) == config.data.padded_length
  assert listops.VOCAB_SIZE <= 32  # our ListOps ids fit the harness's table


def test_listops_trains_from_pickles(tmp_path):
  """The real code path: pickles -> reader -> pipeline -> trainer, then results.json."""
  config = _config("listops", tmp_path / "pickles", "official", max_length=32, padded_length=32)
  _write_harness_files(tmp_path / "pickles", "listops", config)
  config.model.update(emb_dim=16, num_heads=2, num_layers=1, qkv_dim=16, mlp_dim=16,
                      classifier_hidden_dims=(16,))
  config.train.update(num_train_steps=2, eval_every_steps=2, log_every_steps=2,
                      checkpoint_every_steps=2, warmup_steps=1)
  state = trainer.train_and_evaluate(config, tmp_path / "run")
  assert int(state.step) == 2
  results = json.loads((tmp_path / "run" / trainer.RESULTS_FILE).read_text())
  assert np.isfinite(results["final"]["test"]["loss"])
