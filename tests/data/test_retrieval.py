"""The Retrieval (AAN byte pairs) reader and its dual-input batches."""

import numpy as np
import pytest

from lra_jax import base_config, data, errors
from lra_jax.data import retrieval

from release_files import AAN_SIZES


def _config(lra_release, tfds_dir, **data_overrides):
  config = base_config.get_config("retrieval")
  config.data.update(data_dir=tfds_dir, release_dir=lra_release.root, max_length=24,
                     padded_length=32, batch_size=4, eval_batch_size=4, shuffle_buffer_size=16)
  config.data.update(**data_overrides)
  return config


def _ids(document, max_bytes, max_length):
  """The spec (§1.3), independently: first max_bytes bytes, each + 1, first max_length ids."""
  return [b + 1 for b in document[:max_bytes]][:max_length]


def _read(config, split):
  examples, count = retrieval.read(config.data, split)
  return list(examples.as_numpy_iterator()), count


def test_documents_are_bytes_plus_one_cut_to_bytes_then_tokens(lra_release, tfds_dir):
  config = _config(lra_release, tfds_dir, max_document_bytes=20, max_length=12)
  examples, count = _read(config, "train")
  assert count == len(examples) == AAN_SIZES["train"]
  expected = sorted((_ids(t1, 20, 12), _ids(t2, 20, 12), label)
                    for label, t1, t2 in lra_release.aan["train"])
  got = sorted((x["inputs1"].tolist(), x["inputs2"].tolist(), int(x["targets"])) for x in examples)
  assert got == expected
  for x in examples:
    assert x["inputs1"].dtype == x["inputs2"].dtype == x["targets"].dtype == np.int32
    assert x["inputs1"].min() >= 1 and x["inputs1"].max() <= retrieval.VOCAB_SIZE - 1
  assert {int(x["targets"]) for x in examples} == {0, 1}


def test_byte_cut_comes_before_the_token_cut():
  document = bytes(range(50, 250)) * 60  # 12,000 bytes
  ids = retrieval.encode(document, max_bytes=10_000, max_length=11_000).numpy()
  assert len(ids) == 10_000
  np.testing.assert_array_equal(ids, _ids(document, 10_000, 11_000))
  assert len(retrieval.encode(document, max_bytes=10_000, max_length=4_000)) == 4_000


def test_batches_hold_both_documents_padded_and_the_label(lra_release, tfds_dir):
  datasets = data.get_datasets(_config(lra_release, tfds_dir))
  batch = next(datasets.train.as_numpy_iterator())
  assert sorted(batch) == ["inputs1", "inputs2", "targets", "valid"]
  for name in ("inputs1", "inputs2"):
    assert batch[name].shape == (4, 32) and batch[name].dtype == np.int32
    assert (batch[name][:, 24:] == 0).all()
  assert batch["targets"].shape == (4,) and set(batch["targets"]) <= {0, 1}
  validation = list(datasets.validation.as_numpy_iterator())
  assert sum(b["valid"].sum() for b in validation) == AAN_SIZES["validation"]
  assert [b["inputs2"].shape for b in validation] == [(4, 32)] * 2


def test_two_processes_see_disjoint_shards_covering_the_split(lra_release, tfds_dir):
  config = _config(lra_release, tfds_dir)
  seen = []
  for process in range(2):
    test = data.get_datasets(config, process_index=process, process_count=2).test
    seen.append([tuple(row[row > 0]) for b in test.as_numpy_iterator()
                 for row, valid in zip(b["inputs1"], b["valid"]) if valid])
  assert not set(seen[0]) & set(seen[1])
  expected = sorted(tuple(_ids(t1, 10_000, 24)) for _, t1, _ in lra_release.aan["test"])
  assert sorted(seen[0] + seen[1]) == expected


def test_order_is_fixed(lra_release, tfds_dir):
  config = _config(lra_release, tfds_dir)
  def first_batches():
    train = data.get_datasets(config).train.as_numpy_iterator()
    return [b["inputs1"] for _, b in zip(range(4), train)]

  np.testing.assert_array_equal(first_batches(), first_batches())


def test_missing_release_is_a_data_not_found_error(tmp_path):
  config = base_config.get_config("retrieval")
  config.data.update(data_dir=str(tmp_path / "tfds"))
  with pytest.raises(errors.DataNotFoundError, match="lra_release.gz"):
    retrieval.read(config.data, "train")
