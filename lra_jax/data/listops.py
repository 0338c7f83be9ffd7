"""ListOps from the LRA release's TSVs (lra_official_jax.md §1.1).

Reads `basic_{train,val,test}.tsv` (columns Source, Target) and tokenises as
the official pipeline does (`]` becomes `X`, parentheses are dropped, tokens
split on whitespace), with one deliberate change: the vocabulary is a fixed
sorted list, so token ids are the same in every process and every run (the
official ids follow Python set order and change between processes).

Ids: 0 padding, 1..15 the sorted vocabulary below, 16 out of vocabulary;
17 in all, `TASKS['listops'].vocab_size`.
"""

from __future__ import annotations

import pathlib

import tensorflow as tf

from lra_jax import errors
from lra_jax.data import listops_generator

VOCABULARY = tuple(sorted([*listops_generator.OPERATORS, "X", *"0123456789"]))
OOV_ID = len(VOCABULARY) + 1
VOCAB_SIZE = len(VOCABULARY) + 2

# Our split names -> the release's file suffixes.
FILE_SPLITS = {"train": "train", "validation": "val", "test": "test"}


def _missing_data_message(data_dir: str) -> str:
  where = f"data.data_dir={data_dir!r}" if data_dir else "data.data_dir (unset)"
  return (
      f"ListOps data not found: {where} must hold basic_train.tsv, basic_val.tsv and "
      f"basic_test.tsv. Either download the LRA release "
      f"(https://storage.googleapis.com/long-range-arena/lra_release.gz), extract it and pass "
      f"--config.data.data_dir=.../lra_release/listops-1000, or generate the files offline "
      f"with `python preprocess/generate_listops.py --output_dir=DIR` and pass "
      f"--config.data.data_dir=DIR, or add --config.data.generate_if_missing=True to "
      f"generate them into data_dir on first use.")


def ensure_files(data_dir: str, generate_if_missing: bool,
                 settings: listops_generator.GeneratorSettings) -> None:
  """Checks the three TSVs exist, generating them first when allowed."""
  if data_dir and all(tf.io.gfile.exists(str(listops_generator.tsv_path(data_dir, split)))
                      for split in listops_generator.SPLITS):
    return
  if not (data_dir and generate_if_missing):
    raise errors.DataNotFoundError(_missing_data_message(data_dir))
  listops_generator.write_tsvs(data_dir, settings)


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


def read(data_dir: str, split: str, max_length: int) -> tuple[tf.data.Dataset, int]:
  """Examples of `split` ('train', 'validation', 'test') in file order, and their count."""
  path = str(listops_generator.tsv_path(pathlib.Path(data_dir), FILE_SPLITS[split]))
  rows = tf.data.experimental.CsvDataset(path, [tf.string, tf.int32], header=True,
                                         field_delim="\t")
  table = vocabulary_table()
  examples = rows.map(
      lambda source, target: {"inputs": tokenize(source, table, max_length), "targets": target},
      num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return examples, count_rows(path)
