"""The Pathfinder reader: pixel ids, the black-pixel option, 80/10/10 splits, generation."""

import os
import sys
import types

import numpy as np
import pytest

from lra_jax import base_config, data, errors
from lra_jax.data import pathfinder, pixels, tfds_builders

from release_files import PATHFINDER_NON_EMPTY, write_pathfinder


def _config(lra_release, tfds_dir, **data_overrides):
  config = base_config.get_config("pathfinder")
  config.data.update(data_dir=tfds_dir, release_dir=lra_release.root, batch_size=4,
                     eval_batch_size=4, shuffle_buffer_size=32)
  config.data.update(**data_overrides)
  return config


def _read(config, split):
  examples, count = pathfinder.read(config.data, split)
  return list(examples.as_numpy_iterator()), count


def _images(lra_release):
  """{flattened pixels as a tuple: label} of the written non-empty images."""
  return {tuple(np.frombuffer(key, np.uint8)): label
          for key, label in lra_release.pathfinder[(32, "hard")].items()}


@pytest.mark.parametrize("black_pixels_are_padding,shift", [(False, 1), (True, 0)])
def test_ids_are_pixels_plus_one_or_raw_pixels_with_the_quirk(lra_release, tfds_dir,
                                                              black_pixels_are_padding, shift):
  config = _config(lra_release, tfds_dir, black_pixels_are_padding=black_pixels_are_padding)
  examples, _ = _read(config, "train")
  images = _images(lra_release)
  for x in examples:
    assert x["inputs"].shape == (1024,) and x["inputs"].dtype == np.int32
    assert x["targets"].dtype == np.int32 and x["targets"] in (0, 1)
    assert images[tuple(x["inputs"] - shift)] == x["targets"]
  ids = np.concatenate([x["inputs"] for x in examples])
  assert ids.max() < config.model.vocab_size == pixels.vocab_size(black_pixels_are_padding)
  # Mostly black images: black is id 1 (a real token), or id 0 (padding) with the quirk.
  assert (ids == 0).any() == black_pixels_are_padding
  assert (ids == shift).mean() > 0.5


def test_splits_are_80_10_10_disjoint_and_cover_the_non_empty_images(lra_release, tfds_dir):
  config = _config(lra_release, tfds_dir)
  splits = {split: _read(config, split) for split in ("train", "validation", "test")}
  assert {split: count for split, (_, count) in splits.items()} == {
      "train": 16, "validation": 2, "test": 2}
  seen = [tuple(x["inputs"] - 1) for examples, _ in splits.values() for x in examples]
  assert len(seen) == len(set(seen)) == PATHFINDER_NON_EMPTY
  assert set(seen) == set(_images(lra_release))


def test_max_length_follows_the_resolution_and_cuts_the_pixels(lra_release, tfds_dir):
  config = base_config.get_config("pathfinder")
  config.data.pathfinder_resolution = 128
  assert config.data.max_length == config.data.padded_length == 128 * 128
  config = _config(lra_release, tfds_dir, max_length=100)
  examples, _ = _read(config, "test")
  assert {x["inputs"].shape for x in examples} == {(100,)}


def test_vocab_size_follows_the_black_pixel_option():
  for protocol, default in (("official", 257), ("pytorch_lra", 512)):
    config = base_config.get_config("pathfinder", "softmax", protocol)
    assert config.model.vocab_size == default
  for task in ("image", "pathfinder"):
    config = base_config.get_config(task, "softmax", "official")
    config.lock()  # as the command line leaves it
    config.data.black_pixels_are_padding = True
    assert config.model.vocab_size == 256
  assert base_config.get_config("image", "softmax", "pytorch_lra").model.vocab_size == 257


def test_batches_and_two_processes_see_disjoint_shards(lra_release, tfds_dir):
  config = _config(lra_release, tfds_dir)
  batch = next(data.get_datasets(config).train.as_numpy_iterator())
  assert batch["inputs"].shape == (4, 1024) and batch["valid"].all()
  shards = []
  for process in range(2):
    train = data.get_datasets(config, process_index=process, process_count=2).validation
    shards.append({tuple(row) for b in train.as_numpy_iterator()
                   for row, valid in zip(b["inputs"], b["valid"]) if valid})
  assert len(shards[0]) == len(shards[1]) == 1 and not shards[0] & shards[1]
  validation, _ = _read(config, "validation")
  assert shards[0] | shards[1] == {tuple(x["inputs"]) for x in validation}


def test_order_is_fixed(lra_release, tfds_dir):
  config = _config(lra_release, tfds_dir)
  def first_batches():
    train = data.get_datasets(config).train.as_numpy_iterator()
    return [b["targets"] for _, b in zip(range(8), train)]

  np.testing.assert_array_equal(first_batches(), first_batches())


def test_unknown_resolution_or_difficulty_is_a_config_error():
  with pytest.raises(errors.ConfigError, match="32, 64, 128, 256"):
    pathfinder.dataset_name(48, "hard")
  with pytest.raises(errors.ConfigError, match="baseline, intermediate, hard"):
    pathfinder.dataset_name(32, "easy")


@pytest.fixture
def fake_generator(monkeypatch):
  """Stands in for lra_jax.data.pathfinder_generator: writes the release layout and the
  generator's manifest; with `interrupt=True`, its next call stops after one file."""
  fake = types.SimpleNamespace(calls=[], interrupt=False)

  def write_dataset(out_dir, resolution, difficulty, num_images, images_per_file, seed,
                    progress=None):
    fake.calls.append((out_dir, resolution, difficulty, num_images, images_per_file, seed))
    files = [images_per_file] * (num_images // images_per_file)
    interrupted, fake.interrupt = fake.interrupt, False
    ours, = [name for name, directory in tfds_builders.DIFFICULTY_DIRS.items()
             if directory == difficulty]
    write_pathfinder(out_dir, resolution, ours, nested=False,
                     lines_per_file=files[:1] if interrupted else files, empty=(), seed=seed)
    directory = os.path.join(out_dir, tfds_builders.pathfinder_relative_dir(resolution, ours))
    with open(os.path.join(directory, pathfinder.GENERATOR_MANIFEST), "w") as f:
      f.write("{}")
    if interrupted:
      raise KeyboardInterrupt
    progress(num_images)

  module = types.ModuleType(pathfinder.GENERATOR_MODULE)
  module.write_dataset = write_dataset
  monkeypatch.setitem(sys.modules, pathfinder.GENERATOR_MODULE, module)
  return fake


def _generating_config(tmp_path, **data_overrides):
  config = base_config.get_config("pathfinder")
  config.data.update(**{"data_dir": str(tmp_path / "tfds"), "generate_if_missing": True,
                        **data_overrides})
  config.data.pathfinder_generator.update(num_images=10, images_per_file=5, seed=3)
  return config


def test_generate_if_missing_generates_then_prepares(tmp_path, fake_generator):
  config = _generating_config(tmp_path, pathfinder_difficulty="intermediate")
  examples, count = _read(config, "train")
  assert count == len(examples) == 8
  release_dir = str(tmp_path / "tfds" / "downloads" / "manual")
  assert fake_generator.calls == [(release_dir, 32, "curv_contour_length_9", 10, 5, 3)]
  _read(config, "test")
  assert len(fake_generator.calls) == 1  # generated once, then read from the prepared dataset


def test_interrupted_generation_is_completed_not_read_half_done(tmp_path, fake_generator):
  config = _generating_config(tmp_path)
  fake_generator.interrupt = True
  with pytest.raises(KeyboardInterrupt):
    pathfinder.read(config.data, "train")
  _, count = _read(config, "train")
  assert count == 8 and len(fake_generator.calls) == 2  # all 10 images, 80% for training


def test_without_generate_if_missing_nothing_is_generated(tmp_path, fake_generator):
  config = _generating_config(tmp_path, generate_if_missing=False)
  with pytest.raises(errors.DataNotFoundError, match="generate_if_missing"):
    pathfinder.read(config.data, "train")
  assert not fake_generator.calls


def test_missing_generator_module_is_a_clear_error(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, pathfinder.GENERATOR_MODULE, None)  # import fails
  with pytest.raises(errors.DataNotFoundError, match="pathfinder_generator is not available"):
    pathfinder.generate(str(tmp_path), 32, "hard", base_config.get_config(
        "pathfinder").data.pathfinder_generator)
