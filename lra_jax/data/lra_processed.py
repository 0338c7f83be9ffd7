"""The PyTorch LRA harness's `lra_processed` pickles: reading them, and writing ours like them.

Skyformer, Skeinformer, Spectraformer and SchoenbAt (and the Nyströmformer
LRA code they fork) train on pickles written by their
`src/preprocess/create_*.py` (skyformer_skeinformer.md §5) and published on
Google Drive (`DRIVE_URL`). With `data.source='lra_processed'` we train on
those files unchanged; `preprocess/convert_lra_processed.py` writes the same
format from our own pipelines, for running both code bases on identical data.

Format. A file `<stem>.<train|dev|test>.pickle` (`file_stem`) is a Python
list with one dict per example:

* `input_ids_0`: 1-D int32 ndarray of a fixed length (the harness's padded
  length, `harness_length`: ListOps 2048, Text and Retrieval 4096, Image
  and Pathfinder the R*R pixels); 0 is padding.
* `input_ids_1`: Retrieval only, the second document, same format.
* `label`: the class: numpy int32 (ListOps, Retrieval), numpy int64 (Text,
  Image) or a Python int (Pathfinder), `LABEL_TYPES`.

Reading (`read`), per task:

* Splits: train -> 'train', dev -> 'validation', test -> 'test'; the
  shared pipeline shuffles and shards them like every other reader.
* Length: each row keeps its first `data.max_length` ids and is padded to
  `data.padded_length`, as our readers truncate their examples. Cutting
  the stored zeros changes nothing; when real ids are cut, a warning says
  how many examples lost some (e.g. Text pickles hold 4000 tokens, the
  official protocol keeps 1000).
* Ids. Text and Retrieval: bytes + 1, as ours. ListOps: whatever vocabulary
  wrote the file, used as it is. In the seed repos' files that is
  create_listops.py's (brackets dropped, about 14 tokens numbered from 1
  in Python set order, then one out-of-vocabulary id), which is not ours
  and cannot be mapped to ours (the file does not record it); files our
  converter wrote hold our ids (`listops.VOCABULARY`, 1..16). Either way
  the largest id must be below `model.vocab_size` (17 and 32 in our
  configs both suffice).
  Image and Pathfinder: a row holds exactly the R*R gray values, with no
  padding (pixel 0, black, is stored as 0), so the values map exactly to
  our ids: pixel + 1 by default, or the value itself with
  `data.black_pixels_are_padding=True`, which is what the harness does
  (its mask `ids != 0` hides black pixels).
* Checked, each with an error naming the config field to change: ids below
  `model.vocab_size`, labels below `model.num_classes`, pixel rows of R*R
  values in 0..255.
* Memory: each process holds its splits' whole arrays (so does the
  harness); Retrieval's train split is about 4.8 GB.

Security: unpickling can run arbitrary code. Files are read with
`RestrictedUnpickler`, which only builds lists, dicts, strings, numbers and
numpy integer arrays and scalars, and refuses anything else before it runs;
still, only load files from a source you trust.

Files we write reference numpy by its old module names
(`numpy.core.multiarray`), so the seed repos' environments (Python 3.6,
numpy 1.x) load them as well as numpy 2 does, and use pickle protocol 3,
Python 3.6's default.
"""

from __future__ import annotations

import codecs
import dataclasses
import importlib
import operator
import os
import pickle
from typing import Any, Callable, Iterable, Mapping

from absl import logging
import ml_collections
import numpy as np
import tensorflow as tf

from lra_jax import errors
from lra_jax.data import tfds_builders

# Where the seed repos' READMEs link their processed files ("Processed files
# can be downloaded here", Skyformer, Skeinformer, Spectraformer; SchoenbAt
# points at Skyformer's).
DRIVE_URL = "https://drive.google.com/drive/folders/1rE0SjpeFKPFtgmWWjYCoIMz91UozHWWC"

# Our split names -> the harness's file suffixes.
FILE_SPLITS = {"train": "train", "validation": "dev", "test": "test"}
# Tasks whose two documents are `input_ids_0` and `input_ids_1`; whose ids are pixels
# (the same tuples as lra_jax.base_config, which this package does not import).
DUAL_TASKS = ("retrieval",)
PIXEL_TASKS = ("image", "pathfinder")
TASKS = ("listops", "text", "retrieval", "image", "pathfinder")
# The harness's padded lengths (max_seq_len rounded up to a power of two);
# pixel tasks: the image's R*R pixels (`pixel_count`).
HARNESS_LENGTHS = {"listops": 2048, "text": 4096, "retrieval": 4096}
# The type `label` has in the seed repos' files (skyformer_skeinformer.md §5).
LABEL_TYPES: dict[str, Callable[[int], Any]] = {
    "listops": np.int32, "retrieval": np.int32, "text": np.int64, "image": np.int64,
    "pathfinder": int}
IMAGE_PIXELS = 32 * 32  # CIFAR-10
MAX_PIXEL = 255
PICKLE_PROTOCOL = 3


class FormatError(ValueError):
  """A file is not in the lra_processed format; the message says what differs."""


class ForbiddenPickleError(pickle.UnpicklingError):
  """A pickle asked for something an lra_processed file never contains; nothing was run."""


def _numpy_module(name: str):
  """numpy._core.<name> (numpy 2), or numpy.core.<name> (numpy 1)."""
  try:
    return importlib.import_module(f"numpy._core.{name}")
  except ImportError:
    return importlib.import_module(f"numpy.core.{name}")


_MULTIARRAY, _NUMERIC = _numpy_module("multiarray"), _numpy_module("numeric")
# Every global an lra_processed pickle may name, under numpy 1 and numpy 2
# module names: how numpy pickles arrays (protocols 2-5), dtypes and scalars,
# and how protocol 2 pickles bytes. None of them runs code or touches files.
_ALLOWED_GLOBALS = {
    **{(f"numpy.{core}.multiarray", name): getattr(_MULTIARRAY, name)
       for core in ("core", "_core") for name in ("_reconstruct", "scalar")},
    **{(f"numpy.{core}.numeric", "_frombuffer"): _NUMERIC._frombuffer
       for core in ("core", "_core")},
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,
}
# The names we write them under: numpy 1's, which numpy 2 still loads.
_LEGACY_NAMES = {_MULTIARRAY._reconstruct: ("numpy.core.multiarray", "_reconstruct"),
                 _MULTIARRAY.scalar: ("numpy.core.multiarray", "scalar")}


class RestrictedUnpickler(pickle.Unpickler):
  """Unpickles lists, dicts, strings, numbers and numpy arrays, dtypes and scalars only.

  Any other global (a class, a function such as os.system) raises
  ForbiddenPickleError before anything is called.
  """

  def find_class(self, module: str, name: str) -> Any:
    try:
      return _ALLOWED_GLOBALS[(module, name)]
    except KeyError:
      raise ForbiddenPickleError(
          f"the pickle asks for {module}.{name}, which an lra_processed file never contains "
          f"(only lists, dicts, numbers and numpy arrays); it was refused without running "
          f"anything. Pickles can execute code: load only files from a source you trust.") from None


@dataclasses.dataclass(frozen=True)
class Split:
  """One file's examples, stacked.

  Attributes:
    inputs: pickle key ('input_ids_0', 'input_ids_1') -> int32 [num_examples, length].
    labels: int64 [num_examples].
    label_type: name of the first example's label type, e.g. 'int32' or 'int'.
  """

  inputs: dict[str, np.ndarray]
  labels: np.ndarray
  label_type: str

  @property
  def num_examples(self) -> int:
    return len(self.labels)

  @property
  def length(self) -> int:
    return next(iter(self.inputs.values())).shape[1]


def _open(path: str, mode: str):
  """A buffered local file, or a tf.io.gfile file for URLs such as gs://."""
  return tf.io.gfile.GFile(path, mode) if "://" in path else open(path, mode)


def load(path: str, keys: Iterable[str] | None = None) -> Split:
  """Reads and checks one lra_processed file with `RestrictedUnpickler`.

  Rows are copied into one array per key and released one by one, so peak
  memory stays near the unpickled list's size.

  Args:
    path: a `<stem>.<split>.pickle` file.
    keys: the sequence keys every example must have; None: the first
      example's keys that start with 'input_ids_'.

  Returns:
    The stacked examples.

  Raises:
    ForbiddenPickleError: the file names something other than the types above.
    FormatError: the file is not a list of dicts of equal-length integer
      arrays and integer labels.
  """
  with _open(path, "rb") as f:
    rows = RestrictedUnpickler(f).load()
  if not isinstance(rows, list) or not rows or not isinstance(rows[0], dict):
    raise FormatError(f"{path} should hold a non-empty list of dicts (one per example); "
                      f"it holds {type(rows).__name__}{' (empty)' if rows == [] else ''}.")
  if keys is None:
    keys = sorted(k for k in rows[0] if str(k).startswith("input_ids_"))
  keys = list(keys)
  first = rows[0].get(keys[0]) if keys else None
  if not isinstance(first, np.ndarray) or first.ndim != 1:
    raise FormatError(f"{path}: example 0 has no 1-D array under {keys or 'input_ids_*'}; "
                      f"its keys are {sorted(map(str, rows[0]))}.")
  length = first.shape[0]
  inputs = {key: np.zeros((len(rows), length), np.int32) for key in keys}
  labels = np.zeros(len(rows), np.int64)
  label_type = type(rows[0].get("label")).__name__
  for index, row in enumerate(rows):
    if not isinstance(row, dict) or "label" not in row:
      raise FormatError(f"{path}: example {index} is not a dict with a 'label'.")
    for key, stacked in inputs.items():
      ids = row.get(key)
      if (not isinstance(ids, np.ndarray) or ids.shape != (length,)
          or not np.issubdtype(ids.dtype, np.integer)):
        raise FormatError(
            f"{path}: example {index}'s {key!r} is not an integer array of length {length} like "
            f"example 0's (got {type(ids).__name__} {getattr(ids, 'dtype', '')} "
            f"{getattr(ids, 'shape', '')}).")
      if ids.dtype != np.int32 and ids.size and not (
          0 <= ids.min() and ids.max() <= np.iinfo(np.int32).max):
        raise FormatError(f"{path}: example {index}'s {key!r} has ids outside int32.")
      stacked[index] = ids
    try:
      labels[index] = operator.index(row["label"])
    except TypeError:
      raise FormatError(f"{path}: example {index}'s label {row['label']!r} is not an "
                        f"integer.") from None
    rows[index] = None  # frees the example's arrays
  return Split(inputs=inputs, labels=labels, label_type=label_type)


def file_stem(task: str, data: ml_collections.ConfigDict) -> str:
  """The harness's name of a task's files, e.g. 'lra-listops' or
  'lra-pathfinder32-curv_contour_length_14' (difficulty 'hard')."""
  if task == "pathfinder":
    directory = tfds_builders.DIFFICULTY_DIRS.get(data.pathfinder_difficulty)
    if directory is None:
      raise errors.ConfigError(
          f"data.pathfinder_difficulty={data.pathfinder_difficulty!r} is not one of "
          f"{', '.join(tfds_builders.DIFFICULTY_DIRS)}.")
    return f"lra-pathfinder{data.pathfinder_resolution}-{directory}"
  if task not in TASKS:
    raise errors.ConfigError(
        f"No lra_processed files for task {task!r}; tasks: {', '.join(TASKS)}.")
  return f"lra-{task}"


def split_path(directory: str, task: str, data: ml_collections.ConfigDict, split: str) -> str:
  """`<directory>/<stem>.<train|dev|test>.pickle` for our split name."""
  return os.path.join(directory, f"{file_stem(task, data)}.{FILE_SPLITS[split]}.pickle")


def pixel_count(task: str, data: ml_collections.ConfigDict) -> int:
  """Pixels per image of a pixel task: R*R."""
  return data.pathfinder_resolution ** 2 if task == "pathfinder" else IMAGE_PIXELS


def harness_length(task: str, data: ml_collections.ConfigDict) -> int:
  """The length the harness stores (and its model expects) for `task`."""
  return pixel_count(task, data) if task in PIXEL_TASKS else HARNESS_LENGTHS[task]


def sequence_keys(task: str) -> dict[str, str]:
  """Pickle key -> our feature name."""
  if task in DUAL_TASKS:
    return {"input_ids_0": "inputs1", "input_ids_1": "inputs2"}
  return {"input_ids_0": "inputs"}


def missing_message(task: str, data: ml_collections.ConfigDict, missing: list[str]) -> str:
  """One paragraph: which files were expected where, where to get them, how to make them."""
  directory = data.lra_processed_dir
  names = [os.path.basename(split_path("", task, data, s)) for s in FILE_SPLITS]
  if not directory:
    problem = ("data.lra_processed_dir is not set; it should name the directory holding "
               f"{', '.join(names)}")
  elif not tf.io.gfile.isdir(directory):
    problem = (f"data.lra_processed_dir={directory!r} does not exist; it should hold "
               f"{', '.join(names)}")
  elif len(missing) == len(names):
    problem = f"data.lra_processed_dir={directory!r} holds none of {', '.join(names)}"
  else:
    problem = (f"data.lra_processed_dir={directory!r} lacks "
               f"{', '.join(os.path.basename(p) for p in missing)} (of {', '.join(names)})")
  protocol_config = f"configs/lra.py:{task},softmax,pytorch_lra"
  return (
      f"Cannot read the {task} task from lra_processed pickles (data.source='lra_processed'): "
      f"{problem}. These are the files of the PyTorch LRA harness shared by Skyformer, "
      f"Skeinformer, Spectraformer and SchoenbAt; their READMEs link them on Google Drive "
      f"({DRIVE_URL}), and their src/preprocess/create_*.py scripts make them from the LRA "
      f"release. This program never downloads data. To write them from our own pipelines "
      f"instead, run `python preprocess/convert_lra_processed.py write --config={protocol_config} "
      f"--set data.data_dir=TFDS_DIR --output_dir=DIR`. Then pass "
      f"--config.data.lra_processed_dir=DIR, or --config.data.source=tfds to read our prepared "
      f"datasets instead.")


def _check_files(task: str, data: ml_collections.ConfigDict) -> None:
  paths = [split_path(data.lra_processed_dir, task, data, s) for s in FILE_SPLITS]
  missing = [p for p in paths if not data.lra_processed_dir or not tf.io.gfile.exists(p)]
  if missing:
    raise errors.DataNotFoundError(missing_message(task, data, missing))


def _to_ids(ids: np.ndarray, path: str, task: str, data: ml_collections.ConfigDict) -> np.ndarray:
  """Stored values -> our ids, in place where they change (pixel tasks, module docstring)."""
  if task not in PIXEL_TASKS:
    return ids
  pixels = pixel_count(task, data)
  if ids.shape[1] != pixels:
    raise FormatError(
        f"{path} holds rows of {ids.shape[1]} values, but a {task} image has {pixels} pixels "
        f"(check data.pathfinder_resolution and the file).")
  if ids.size and (ids.min() < 0 or ids.max() > MAX_PIXEL):
    raise FormatError(f"{path} holds values outside 0..{MAX_PIXEL}; {task} rows are gray pixels.")
  if not data.black_pixels_are_padding:
    ids += 1
  return ids


def _truncate(ids: np.ndarray, path: str, key: str, max_length: int) -> np.ndarray:
  """The first `max_length` ids of each row, warning if real ids are cut."""
  if ids.shape[1] <= max_length:
    return ids
  cut = int(np.count_nonzero(ids[:, max_length:].any(axis=1)))
  if cut:
    logging.warning("%s: %d of %d examples have %s ids beyond data.max_length=%d; they are cut.",
                    path, cut, len(ids), key, max_length)
  return np.ascontiguousarray(ids[:, :max_length])


def _examples(features: Mapping[str, np.ndarray], labels: np.ndarray) -> tf.data.Dataset:
  """{name: int32 [length] row, 'targets': int32 []} for each index, without copying
  the arrays into the graph (they can exceed its 2 GB limit)."""
  names = list(features)
  lengths = [features[name].shape[1] for name in names]

  def fetch(index):
    return (*(features[name][index] for name in names), labels[index])

  def example(index):
    values = tf.numpy_function(fetch, [index], [tf.int32] * (len(names) + 1), stateful=False)
    example = {name: tf.ensure_shape(value, [length])
               for name, value, length in zip(names, values, lengths)}
    return {**example, "targets": tf.ensure_shape(values[-1], [])}

  return tf.data.Dataset.range(len(labels)).map(example, num_parallel_calls=tf.data.AUTOTUNE,
                                                deterministic=True)


def read(data: ml_collections.ConfigDict, split: str, *, task: str, vocab_size: int,
         num_classes: int) -> tuple[tf.data.Dataset, int]:
  """Examples of `split` from the lra_processed files, in file order, and their count.

  Args:
    data: the config's `data` section: `lra_processed_dir`, `max_length`,
      `padded_length`; pixel tasks `black_pixels_are_padding`; Pathfinder
      `pathfinder_resolution`, `pathfinder_difficulty`.
    split: 'train', 'validation' (the 'dev' file) or 'test'.
    task: which files and features (module docstring).
    vocab_size: `model.vocab_size`; every id must be below it.
    num_classes: `model.num_classes`; every label must be below it.

  Returns:
    Dicts of `inputs` (Retrieval: `inputs1`, `inputs2`) int32
    [min(stored length, max_length)] and `targets` int32 [], and their count.

  Raises:
    errors.DataNotFoundError: one of the task's three files is missing.
    errors.ConfigError: ids or labels too large for the model, or
      data.max_length above data.padded_length.
    FormatError, ForbiddenPickleError: see `load`.
  """
  _check_files(task, data)
  if data.max_length > data.padded_length:
    raise errors.ConfigError(f"data.padded_length={data.padded_length} is shorter than "
                             f"data.max_length={data.max_length}.")
  path = split_path(data.lra_processed_dir, task, data, split)
  keys = sequence_keys(task)
  stored = load(path, keys)
  features = {}
  for key, name in keys.items():
    ids = _truncate(_to_ids(stored.inputs.pop(key), path, task, data), path, key, data.max_length)
    largest = int(ids.max(initial=0))
    if largest >= vocab_size:
      hint = (" ListOps pickles use the harness's vocabulary, not ours (module docstring)."
              if task == "listops" else "")
      raise errors.ConfigError(
          f"{path} holds token id {largest} but model.vocab_size={vocab_size}: the embedding "
          f"table needs vocab_size > every id. Set --config.model.vocab_size={largest + 1} "
          f"(or more).{hint}")
    features[name] = ids
  labels = stored.labels
  if labels.min() < 0 or labels.max() >= num_classes:
    raise errors.ConfigError(
        f"{path} holds labels {labels.min()}..{labels.max()} but model.num_classes="
        f"{num_classes}; set --config.model.num_classes to cover them.")
  if task == "listops":
    logging.log_first_n(logging.INFO, "ListOps from %s: token ids are used as stored (the seed "
                        "repos' files: their own vocabulary, not ours).", 1, path)
  return _examples(features, labels.astype(np.int32)), stored.num_examples


class _LegacyNumpyPickler(pickle._Pickler):  # pylint: disable=protected-access
  """The pure-Python pickler, naming numpy's reconstructors by their numpy 1 module.

  (The C pickler always writes `numpy._core...`, which numpy 1 cannot import.)
  """

  def save_global(self, obj, name=None):
    legacy = _LEGACY_NAMES.get(obj)
    if legacy is None:
      return super().save_global(obj, name)
    module, qualname = legacy
    self.write(pickle.GLOBAL + f"{module}\n{qualname}\n".encode("ascii"))
    self.memoize(obj)
    return None


def _row(tokens: np.ndarray, length: int, task: str, data: ml_collections.ConfigDict,
         index: int) -> np.ndarray:
  """Our ids of one sequence -> the stored int32 row of `length` values."""
  tokens = np.asarray(tokens, np.int32)
  if task in PIXEL_TASKS:
    if tokens.shape[0] != pixel_count(task, data):
      raise errors.ConfigError(
          f"{task} example {index} has {tokens.shape[0]} pixels, not the whole image's "
          f"{pixel_count(task, data)}; lra_processed rows hold whole images: set "
          f"data.max_length={pixel_count(task, data)}.")
    tokens = tokens if data.black_pixels_are_padding else tokens - 1
  if tokens.shape[0] > length:
    raise errors.ConfigError(
        f"{task} example {index} has {tokens.shape[0]} tokens, more than the stored length "
        f"{length}; lower data.max_length or raise the length.")
  row = np.zeros(length, np.int32)
  row[:tokens.shape[0]] = tokens
  return row


def write(examples: Iterable[Mapping[str, np.ndarray]], path: str, *, task: str,
          data: ml_collections.ConfigDict, length: int | None = None,
          progress: Callable[[int], Any] | None = None, chunk_size: int = 1024) -> int:
  """Writes our examples as one lra_processed file, atomically.

  The file is streamed (memory stays at `chunk_size` examples), written next
  to `path` under a temporary name, and renamed to `path` only when complete.

  Args:
    examples: dicts from a reader (`READERS[task].read(data, split)`, as numpy):
      unpadded `inputs` (or `inputs1`, `inputs2`) ids and a `targets` label.
    path: the file to write.
    task: the task they belong to (label type, features, pixel mapping).
    data: the config's `data` section the examples were read with (pixel
      tasks: `black_pixels_are_padding` says how to turn ids back into pixels).
    length: stored row length; default `harness_length(task, data)`.
    progress: called with 1 after each example written.
    chunk_size: examples pickled between memo resets.

  Returns:
    The number of examples written.

  Raises:
    errors.ConfigError: an example does not fit `length`, or a pixel
      example is not a whole image.
  """
  length = harness_length(task, data) if length is None else length
  keys = sequence_keys(task)
  label_type = LABEL_TYPES[task]
  tmp = f"{path}.tmp-{os.getpid()}"
  count = 0
  try:
    with _open(tmp, "wb") as out:
      pickler = _LegacyNumpyPickler(out, protocol=PICKLE_PROTOCOL)
      pickler.write(pickle.PROTO + bytes([PICKLE_PROTOCOL]) + pickle.EMPTY_LIST)
      pending = 0
      for example in examples:
        if pending == 0:
          pickler.write(pickle.MARK)
        row = {key: _row(example[name], length, task, data, count) for key, name in keys.items()}
        row["label"] = label_type(int(example["targets"]))
        pickler.save(row)
        count, pending = count + 1, pending + 1
        if pending == chunk_size:
          pickler.write(pickle.APPENDS)
          pickler.clear_memo()  # lets the written arrays go
          pending = 0
        if progress is not None:
          progress(1)
      if pending:
        pickler.write(pickle.APPENDS)
      pickler.write(pickle.STOP)
    tf.io.gfile.rename(tmp, path, overwrite=True)
  except BaseException:
    if tf.io.gfile.exists(tmp):
      tf.io.gfile.remove(tmp)
    raise
  return count
