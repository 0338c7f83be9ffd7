"""The ListOps generator and reader against the LRA release's format and algorithm."""

import csv

import release_files

import numpy as np
import pytest
import tensorflow as tf

from lra_jax import base_config, errors
from lra_jax.data import listops, listops_generator

SMALL = listops_generator.GeneratorSettings(num_train=60, num_val=10, num_test=10, min_length=5,
                                            max_length=40, max_depth=5, max_args=4, seed=3)


def _data(data_dir, **overrides):
  data = base_config.get_config("listops").data
  data.update(data_dir=str(data_dir), max_length=1000, **overrides)
  data.listops_generator.update(**SMALL.__dict__)
  return data


def _tokens(source):
  return source.replace("(", "").replace(")", "").split()


@pytest.mark.parametrize("text,value", [
    ("[MAX 2 9 [MIN 4 7 ] 0 ]", 9),
    ("[MIN 4 7 ]", 4),
    ("[MED 1 2 3 9 ]", 2),  # even count: mean of the middle two, truncated
    ("[MED 5 [SM 4 4 ] 6 ]", 6),
    ("[SM 9 9 5 ]", 3),
])
def test_evaluate_follows_the_operators(text, value):
  def parse(tokens):
    token = tokens.pop(0)
    if token.isdigit():
      return int(token)
    body = token
    while tokens[0] != "]":
      body = (body, parse(tokens))
    tokens.pop(0)
    return (body, "]")

  tree = parse(text.split())
  assert listops_generator.evaluate(tree) == value
  assert _tokens(listops_generator.to_string(tree)) == text.split()


def test_generated_splits_are_disjoint_sized_and_within_bounds():
  splits = listops_generator.generate(SMALL)
  assert [len(splits[s]) for s in listops_generator.SPLITS] == [60, 10, 10]
  sources = [source for rows in splits.values() for source, _ in rows]
  assert len(set(sources)) == len(sources)
  for source, label in (row for rows in splits.values() for row in rows):
    assert 5 < len(_tokens(source)) < 40
    assert 0 <= label <= 9
    assert source.startswith("( ") and source.endswith(" )")


def test_generation_is_a_function_of_the_seed():
  assert listops_generator.generate(SMALL) == listops_generator.generate(SMALL)
  other = listops_generator.GeneratorSettings(**{**SMALL.__dict__, "seed": 4})
  assert listops_generator.generate(other) != listops_generator.generate(SMALL)


def test_tsvs_have_the_release_layout(tmp_path):
  listops_generator.write_tsvs(tmp_path, SMALL)
  for split, size in (("train", 60), ("val", 10), ("test", 10)):
    with open(tmp_path / f"basic_{split}.tsv") as f:
      rows = list(csv.reader(f, delimiter="\t"))
    assert rows[0] == ["Source", "Target"]
    assert len(rows) == size + 1
  assert not list(tmp_path.glob(".*tmp"))


def test_reader_tokenises_with_the_fixed_sorted_vocabulary(tmp_path):
  listops_generator.write_tsvs(tmp_path, SMALL)
  examples, count = listops.read(_data(tmp_path), "validation")
  assert count == 10
  rows = listops_generator.generate(SMALL)["val"]
  ids = {token: i + 1 for i, token in enumerate(sorted(listops.VOCABULARY))}
  for example, (source, label) in zip(examples.as_numpy_iterator(), rows):
    expected = [ids["X" if t == "]" else t] for t in _tokens(source)]
    np.testing.assert_array_equal(example["inputs"], expected)
    assert example["targets"] == label
  assert listops.VOCAB_SIZE == 17 and listops.OOV_ID == 16


def test_unknown_tokens_map_to_oov_and_long_inputs_are_cut():
  table = listops.vocabulary_table()
  ids = listops.tokenize(tf.constant("( ( [MAX 7 ) [FIRST ) ] )"), table, max_length=3)
  np.testing.assert_array_equal(ids, [listops.VOCABULARY.index("[MAX") + 1, 8, listops.OOV_ID])


def test_missing_files_say_where_to_get_them(tmp_path):
  with pytest.raises(errors.DataNotFoundError) as error:
    listops.locate(_data(tmp_path))
  message = str(error.value)
  assert "lra_release" in message and "preprocess/generate_listops.py" in message
  assert "generate_if_missing" in message and "release_dir" in message
  assert listops.locate(_data(tmp_path, generate_if_missing=True)) == "tsv"
  assert (tmp_path / "basic_test.tsv").exists()


def test_the_prepared_tfds_dataset_reads_like_the_tsvs(lra_release, tmp_path):
  tsv_dir = tmp_path / "tsv"
  listops_generator.write_tsvs(tsv_dir, release_files.LISTOPS_SETTINGS)
  from_release = _data(tmp_path / "tfds", release_dir=lra_release.root)
  assert listops.locate(from_release) == "tfds"  # prepared from the release on first use
  assert listops.locate(_data(tmp_path / "tfds")) == "tfds"  # then found in data_dir alone
  for split in ("train", "validation", "test"):
    tfds_examples, tfds_count = listops.read(from_release, split)
    tsv_examples, tsv_count = listops.read(_data(tsv_dir), split)
    assert tfds_count == tsv_count

    def rows(examples):
      return sorted((tuple(x["inputs"]), int(x["targets"])) for x in examples.as_numpy_iterator())

    assert rows(tfds_examples) == rows(tsv_examples)
