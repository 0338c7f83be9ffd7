"""ListOps from the release's TSVs or the lra_listops TFDS dataset (lra_official_jax.md §1.1).

Reads `basic_{train,val,test}.tsv` (columns Source, Target) from
`data.data_dir` or, when they are not there, the `lra_listops` TFDS dataset
in `data.data_dir` (see `locate`), and tokenises as the official pipeline
does (`]` becomes `X`, parentheses are dropped, tokens split on whitespace),
with one deliberate change: the vocabulary is a fixed sorted list, so token
ids are the same in every process and every run (the official ids follow
Python set order and change between processes).

Ids: 0 padding, 1..15 the sorted vocabulary below, 16 out of vocabulary;
17 in all, `TASKS['listops'].vocab_size`.
"""

from __future__ import annotations

import pathlib

import ml_collections
import tensorflow as tf

from lra_jax import errors
from lra_jax.data import listops_generator, release, tfds_builders, tfds_source

VOCABULARY = tuple(sorted([*listops_generator.OPERATORS, "X", *"0123456789"]))
OOV_ID = len(VOCABULARY) + 1
VOCAB_SIZE = len(VOCABULARY) + 2

DATASET = tfds_builders.LraListops.name
# Our split names -> the release's file suffixes.
FILE_SPLITS = tfds_builders.LraListops.FILE_SPLITS


def _missing_data_message(data: ml_collections.ConfigDict, release_dir: str) -> str:
  where = f"data.data_dir={data.data_dir!r}" if data.data_dir else "data.data_dir (unset)"
  return (
      f"ListOps data not found: {where} holds neither basic_train.tsv, basic_val.tsv and "
      f"basic_test.tsv nor a prepared {DATASET!r} TFDS dataset, and the release directory "
      f"{release_dir!r} has no listops-1000/. Either download the LRA release "
      f"({release.URL}), extract it and pass --config.data.data_dir=.../lra_release/listops-1000 "
      f"(or --config.data.release_dir=.../lra_release with a TFDS --config.data.data_dir), or "
      f"generate the files offline with `python preprocess/generate_listops.py --output_dir=DIR` "
      f"and pass --config.data.data_dir=DIR, or add --config.data.generate_if_missing=True to "
      f"generate them into data_dir on first use.")


def _has_tsvs(data_dir: str) -> bool:
  return bool(data_dir) and all(
      tf.io.gfile.exists(str(listops_generator.tsv_path(data_dir, split)))
      for split in listops_generator.SPLITS)


def locate(data: ml_collections.ConfigDict) -> str:
  """Where ListOps will be read from, 'tsv' or 'tfds', preparing or generating it first if needed.

  In order: the TSVs in `data.data_dir`; the lra_listops TFDS dataset in
  `data.data_dir`; that dataset prepared from the release in
  `data.release_dir` (default `<data_dir>/downloads/manual`); the TSVs
  generated into `data.data_dir` when `data.generate_if_missing`.

  Raises:
    errors.DataNotFoundError: none of these is possible.
  """
  if _has_tsvs(data.data_dir):
    return "tsv"
  if tfds_source.is_prepared(DATASET, data.data_dir):
    return "tfds"
  release_dir = tfds_source.release_dir(data)
  if release.find(release_dir, "listops-1000"):
    tfds_source.prepare(DATASET, data.data_dir, release_dir)
    return "tfds"
  if data.data_dir and data.generate_if_missing:
    settings = listops_generator.GeneratorSettings(**data.listops_generator.to_dict())
    listops_generator.write_tsvs(data.data_dir, settings)
    return "tsv"
  raise errors.DataNotFoundError(_missing_data_message(data, release_dir))


def vocabulary_table() -> tf.lookup.StaticHashTable:
  """Token string -> id, OOV_ID for anything else."""
  return tf.lookup.StaticHashTable(
      tf.lookup.KeyValueTensorInitializer(
          tf.constant(VOCABULARY), tf.range(1, len(VOCABULARY) + 1, dtype=tf.int32)),
      default_value=OOV_ID)


def tokenize(source: tf.Tensor, table: tf.lookup.StaticHashTable, max_length: int) -> tf.Tensor:
  """A Source string -> int32 ids [<= max_length] (see the module docstring)."""
  text = tf.strings.regex_replace(source, r"\]", "X")
  text = tf.strings.regex_replace(text, r"[()]", "")
  return table.lookup(tf.strings.split(text))[:max_length]


def count_rows(path: str) -> int:
  """Examples in a TSV: lines after the header."""
  with tf.io.gfile.GFile(path) as f:
    return sum(1 for _ in f) - 1


def _rows(data: ml_collections.ConfigDict, split: str) -> tuple[tf.data.Dataset, int]:
  """(Source string, int32 Target) pairs of `split` in a fixed order, and their count."""
  if locate(data) == "tfds":
    rows, count = tfds_source.load(DATASET, data.data_dir, split)
    return rows.map(lambda row: (row["source"], tf.cast(row["target"], tf.int32))), count
  path = str(listops_generator.tsv_path(pathlib.Path(data.data_dir), FILE_SPLITS[split]))
  rows = tf.data.experimental.CsvDataset(path, [tf.string, tf.int32], header=True,
                                         field_delim="\t")
  return rows, count_rows(path)


def read(data: ml_collections.ConfigDict, split: str) -> tuple[tf.data.Dataset, int]:
  """Examples of `split` in file order, and their count.

  Args:
    data: the config's `data` section (data_dir, release_dir, max_length,
      generate_if_missing, listops_generator).
    split: 'train', 'validation' or 'test'.

  Returns:
    Dicts of `inputs` int32 [<= max_length] and `targets` int32 [], and their count.

  Raises:
    errors.DataNotFoundError: see `locate`.
  """
  rows, count = _rows(data, split)
  table = vocabulary_table()
  examples = rows.map(
      lambda source, target: {"inputs": tokenize(source, table, data.max_length),
                              "targets": target},
      num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return examples, count
