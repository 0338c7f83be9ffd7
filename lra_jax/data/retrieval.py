"""Byte-level AAN document matching, two documents per example (lra_official_jax.md §1.3).

Reads the `lra_retrieval` TFDS dataset (the release's
`tsv_data/new_aan_pairs.{train,eval,test}.tsv`, see `tfds_builders.py`),
prepared in `data.data_dir`, or prepared there on first use from the release
in `data.release_dir` (default `<data_dir>/downloads/manual`).

Each document is encoded as the official pipeline does: its raw byte string
is first cut to `data.max_document_bytes` bytes (10,000), then every byte b
becomes id b + 1 (`ByteTextEncoder`; 0 is padding, vocab 257), then the ids
are cut to `data.max_length` tokens (4,000). Examples are
{'inputs1', 'inputs2', 'targets'}: the two documents, and 1 when one paper
cites the other.

Deliberate differences from the official reader: every split is read in a
fixed order (the official one shuffles all three), and evaluation keeps
every example (the official one drops a different random remainder each pass).
"""

from __future__ import annotations

import ml_collections
import tensorflow as tf

from lra_jax.data import tfds_builders, tfds_source, text

DATASET = tfds_builders.LraRetrieval.name
VOCAB_SIZE = text.VOCAB_SIZE


def encode(document: tf.Tensor, max_bytes: int, max_length: int) -> tf.Tensor:
  """A raw byte string -> int32 ids [<= max_length]: first `max_bytes` bytes, each plus one."""
  return text.encode(tf.strings.substr(document, 0, max_bytes), max_length)


def read(data: ml_collections.ConfigDict, split: str) -> tuple[tf.data.Dataset, int]:
  """Examples of `split` in file order, and their count.

  Args:
    data: the config's `data` section: `data_dir`, `release_dir`, `max_length`
      (tokens kept per document), `max_document_bytes`.
    split: 'train', 'validation' or 'test'.

  Returns:
    Dicts of `inputs1`, `inputs2` int32 [<= max_length] and `targets` int32 [],
    and their count.

  Raises:
    errors.DataNotFoundError: the dataset is not prepared and the release lacks its files.
  """
  tfds_source.prepare(DATASET, data.data_dir, tfds_source.release_dir(data))
  rows, count = tfds_source.load(DATASET, data.data_dir, split)

  def example(row):
    return {"inputs1": encode(row["text1"], data.max_document_bytes, data.max_length),
            "inputs2": encode(row["text2"], data.max_document_bytes, data.max_length),
            "targets": tf.cast(row["label"], tf.int32)}

  return rows.map(example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True), count
