"""The Text (IMDB bytes) and Image (CIFAR-10 grayscale) readers on small real TFDS datasets.

The datasets are written offline by subclasses of the real TFDS builders that
yield a handful of hand-made examples instead of downloading, so the readers
open real TFDS files under the real names and versions.
"""

import json

import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds

from lra_jax import base_config, data, errors, trainer
from lra_jax.data import image, text
from tiny import tiny_config

TRAIN_REVIEWS = ["café!", "A fine film.", "Dull and too long, really", "ok"]
TEST_REVIEWS = ["Great 😀", "bad", "so-so movie"]
NUM_TRAIN_IMAGES = 20  # 90% / 10%: 18 train, 2 validation
NUM_TEST_IMAGES = 5
# Image 0's known pixels: (row, column) -> RGB and the grayscale value TF gives.
KNOWN_PIXELS = {(0, 0): ((255, 255, 255), 255),  # weights sum to 0.9999; x 255.5 -> 255
                (1, 2): ((0, 255, 0), 149),  # 0.587 x 255.5 = 149.7, truncated
                (2, 1): ((200, 100, 50), 124),
                (31, 30): ((0, 0, 0), 0)}


def _labels(reviews):
  return [i % 2 for i in range(len(reviews))]


def _images(num, seed):
  images = np.random.default_rng(seed).integers(0, 256, (num, 32, 32, 3), dtype=np.uint8)
  if seed == 0:
    for (row, column), (rgb, _) in KNOWN_PIXELS.items():
      images[0, row, column] = rgb
  return images


def _grayscale(images):
  """The spec's conversion (§1.4), independently: weighted [0, 1] sum, x 255.5, truncated."""
  weights = np.array([0.2989, 0.5870, 0.1140])
  return np.floor(images.astype(np.float64) / 255.0 @ weights * 255.5).astype(np.int32)


_IMDB_BUILDER = tfds.builder_cls("imdb_reviews")
_CIFAR10_BUILDER = tfds.builder_cls("cifar10")

with tfds.core.registered.skip_registration():  # the real names stay bound to the real builders

  class _TinyImdb(_IMDB_BUILDER):
    name = "imdb_reviews"

    def _split_generators(self, dl_manager):
      del dl_manager
      return {"train": self._generate_examples(TRAIN_REVIEWS),
              "test": self._generate_examples(TEST_REVIEWS)}

    def _generate_examples(self, reviews):  # pylint: disable=arguments-differ
      for i, (review, label) in enumerate(zip(reviews, _labels(reviews))):
        yield i, {"text": review, "label": label}

  class _TinyCifar10(_CIFAR10_BUILDER):
    name = "cifar10"

    def _split_generators(self, dl_manager):
      del dl_manager
      return {"train": self._generate_examples("train_", _images(NUM_TRAIN_IMAGES, 0)),
              "test": self._generate_examples("test_", _images(NUM_TEST_IMAGES, 1))}

    def _generate_examples(self, prefix, images):  # pylint: disable=arguments-differ
      for i, pixels in enumerate(images):
        yield i, {"id": f"{prefix}{i:05d}", "image": pixels, "label": i % 10}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  directory = str(tmp_path_factory.mktemp("tfds"))
  _TinyImdb(config="plain_text", data_dir=directory).download_and_prepare()
  _TinyCifar10(data_dir=directory).download_and_prepare()
  return directory


def _read(reader, data_dir, split, max_length, black_pixels_are_padding=False):
  config = ml_collections.ConfigDict(dict(data_dir=data_dir, max_length=max_length,
                                          black_pixels_are_padding=black_pixels_are_padding))
  examples, count = reader.read(config, split)
  return list(examples.as_numpy_iterator()), count


def _by_text(examples):
  return {bytes((x["inputs"] - 1).tolist()).decode("utf-8"): x for x in examples}


def test_text_ids_are_utf8_bytes_plus_one(data_dir):
  examples, count = _read(text, data_dir, "train", 1000)
  assert count == len(TRAIN_REVIEWS) == len(examples)
  by_text = _by_text(examples)
  assert sorted(by_text) == sorted(TRAIN_REVIEWS)
  cafe = by_text["café!"]["inputs"]
  assert cafe.dtype == np.int32
  np.testing.assert_array_equal(cafe, [ord("c") + 1, ord("a") + 1, ord("f") + 1, 0xC3 + 1,
                                       0xA9 + 1, ord("!") + 1])
  for review, label in zip(TRAIN_REVIEWS, _labels(TRAIN_REVIEWS)):
    assert by_text[review]["targets"] == label
  assert max(x["inputs"].max() for x in examples) <= text.VOCAB_SIZE - 1
  assert min(x["inputs"].min() for x in examples) >= 1


def test_text_truncates_to_max_length(data_dir):
  examples, _ = _read(text, data_dir, "train", 4)
  full, _ = _read(text, data_dir, "train", 1000)
  for short, long in zip(examples, full):
    np.testing.assert_array_equal(short["inputs"], long["inputs"][:4])
    assert short["targets"] == long["targets"]
  assert sorted(len(x["inputs"]) for x in examples) == [2, 4, 4, 4]  # 'ok' is 2 bytes


def test_text_validation_is_the_test_split(data_dir):
  validation, validation_count = _read(text, data_dir, "validation", 1000)
  test, test_count = _read(text, data_dir, "test", 1000)
  assert validation_count == test_count == len(TEST_REVIEWS)
  assert sorted(_by_text(test)) == sorted(TEST_REVIEWS)
  for a, b in zip(validation, test):  # same examples, same order
    np.testing.assert_array_equal(a["inputs"], b["inputs"])
    assert a["targets"] == b["targets"]


@pytest.mark.parametrize("black_pixels_are_padding,shift", [(False, 1), (True, 0)])
def test_image_known_pixels_and_row_major_order(data_dir, black_pixels_are_padding, shift):
  """Ids are gray + 1 (black is id 1, a real token), or gray with the official quirk."""
  examples, _ = _read(image, data_dir, "train", 1024, black_pixels_are_padding)
  expected = _grayscale(_images(NUM_TRAIN_IMAGES, 0))
  for (row, column), (_, gray) in KNOWN_PIXELS.items():
    assert expected[0, row, column] == gray  # the independent formula agrees with the table
  matches = [x for x in examples if np.array_equal(x["inputs"], expected[0].reshape(-1) + shift)]
  assert len(matches) == 1
  inputs = matches[0]["inputs"]
  assert inputs.shape == (1024,) and inputs.dtype == np.int32
  for (row, column), (_, gray) in KNOWN_PIXELS.items():
    assert inputs[row * 32 + column] == gray + shift
  assert (inputs[31 * 32 + 30] == 0) == black_pixels_are_padding  # the black pixel
  assert matches[0]["targets"] == 0
  ids = np.concatenate([x["inputs"] for x in examples])
  assert ids.min() >= shift and ids.max() <= 255 + shift


def test_image_splits_are_90_10_of_train_and_the_test_split(data_dir):
  train, num_train = _read(image, data_dir, "train", 1024)
  validation, num_validation = _read(image, data_dir, "validation", 1024)
  test, num_test = _read(image, data_dir, "test", 1024)
  assert (num_train, num_validation, num_test) == (18, 2, NUM_TEST_IMAGES)
  assert (len(train), len(validation), len(test)) == (18, 2, NUM_TEST_IMAGES)

  def indices(examples, images):
    flat = _grayscale(images).reshape(len(images), -1)
    found = []
    for x in examples:
      index, = np.flatnonzero((flat + 1 == x["inputs"]).all(axis=1))
      assert x["targets"] == index % 10
      found.append(index)
    return found

  train_indices = indices(train, _images(NUM_TRAIN_IMAGES, 0))
  validation_indices = indices(validation, _images(NUM_TRAIN_IMAGES, 0))
  assert sorted(train_indices + validation_indices) == list(range(NUM_TRAIN_IMAGES))
  assert sorted(indices(test, _images(NUM_TEST_IMAGES, 1))) == list(range(NUM_TEST_IMAGES))


def test_image_truncates_to_max_length(data_dir):
  short, _ = _read(image, data_dir, "test", 100)
  full, _ = _read(image, data_dir, "test", 1024)
  for a, b in zip(short, full):
    np.testing.assert_array_equal(a["inputs"], b["inputs"][:100])


@pytest.mark.parametrize("reader", [text, image])
def test_order_is_fixed(data_dir, reader):
  first, _ = _read(reader, data_dir, "train", 1024)
  again, _ = _read(reader, data_dir, "train", 1024)
  for a, b in zip(first, again):
    np.testing.assert_array_equal(a["inputs"], b["inputs"])


@pytest.mark.parametrize("reader,name", [(text, "imdb_reviews/plain_text"), (image, "cifar10")])
def test_missing_dataset_says_how_to_prepare_it(tmp_path, reader, name):
  with pytest.raises(errors.DataNotFoundError) as raised:
    _read(reader, str(tmp_path), "train", 16)
  message = str(raised.value)
  assert f"{name!r} is not prepared" in message and str(tmp_path) in message
  assert f"tfds build {name} --data_dir=DIR" in message
  assert "download_and_prepare()" in message and "--config.data.data_dir=DIR" in message


@pytest.mark.parametrize("task,max_length,num_validation,num_test", [
    ("text", 16, len(TEST_REVIEWS), len(TEST_REVIEWS)),  # validation = test
    ("image", 1024, 2, NUM_TEST_IMAGES),
])
def test_get_datasets_gives_padded_batches(data_dir, task, max_length, num_validation, num_test):
  config = base_config.get_config(task)
  config.data.update(data_dir=data_dir, max_length=max_length, padded_length=max_length + 8,
                     batch_size=2, eval_batch_size=2, shuffle_buffer_size=8)
  datasets = data.get_datasets(config)
  train = next(datasets.train.as_numpy_iterator())
  assert train["inputs"].shape == (2, max_length + 8) and train["inputs"].dtype == np.int32
  assert train["valid"].all() and (train["inputs"][:, max_length:] == 0).all()
  validation = list(datasets.validation.as_numpy_iterator())
  num_batches = -(-num_validation // 2)
  assert [b["inputs"].shape for b in validation] == [(2, max_length + 8)] * num_batches
  assert sum(b["valid"].sum() for b in validation) == num_validation
  test = list(datasets.test.as_numpy_iterator())
  assert sum(b["valid"].sum() for b in test) == num_test


@pytest.mark.parametrize("task", ["text", "image"])
def test_trains_a_few_steps_through_the_real_code_path(data_dir, tmp_path, task):
  state = trainer.train_and_evaluate(tiny_config(task, data_dir, "", 16), tmp_path)
  assert int(state.step) == 2
  results = json.loads((tmp_path / trainer.RESULTS_FILE).read_text())
  for split in ("validation", "test"):
    assert np.isfinite(results["final"][split]["loss"])
