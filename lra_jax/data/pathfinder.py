"""Pathfinder and Path-X: are the two dots joined by a path? (lra_official_jax.md §1.5)

Reads `lra_pathfinder/<R>_<difficulty>` (see `tfds_builders.py`) with
R = `data.pathfinder_resolution` (32 = Pathfinder, 128 = Path-X) and
difficulty = `data.pathfinder_difficulty` ('baseline', 'intermediate', or
'hard', the one the paper uses). Where it comes from, first match wins:

1. the TFDS dataset already prepared in `data.data_dir`;
2. prepared there on first use from the release layout in `data.release_dir`
   (default `<data_dir>/downloads/manual`): the extracted LRA release, or
   images from `pathfinder_generator`;
3. with `data.generate_if_missing`, images generated into that release
   directory first (`data.pathfinder_generator` settings), then 2; an
   interrupted generation is completed, not read half-done.

Splits as the official code slices its single split: train = first 80%,
validation = next 10%, test = last 10% (160k / 20k / 20k of 200k images).

Tokens: the R x R gray pixels, flattened row-major (R² = `data.max_length`).
Token ids (`pixels.py`): by default id = pixel + 1, vocab 257. The official
code uses id = pixel, vocab 256, which turns every black pixel (most of a
Pathfinder image's background) into padding, masked out of attention and
pooling (§9.3); `data.black_pixels_are_padding=True` reproduces that, and
the model's vocab size follows the option.
"""

from __future__ import annotations

import importlib
import os

import ml_collections
import tensorflow as tf
import tqdm

from lra_jax import errors
from lra_jax.data import pixels, release, tfds_builders, tfds_source

# Our split names -> slices of the builder's single split (§1.5).
TFDS_SPLITS = {"train": "train[:80%]", "validation": "train[80%:90%]", "test": "train[90%:]"}
GENERATOR_MODULE = "lra_jax.data.pathfinder_generator"
# The generator writes this manifest into every directory it fills; such a
# directory may hold an interrupted run, which `generate` resumes.
GENERATOR_MANIFEST = "generator.json"


def dataset_name(resolution: int, difficulty: str) -> str:
  """The TFDS name of one configuration, e.g. 'lra_pathfinder/32_hard'."""
  if resolution not in tfds_builders.RESOLUTIONS:
    raise errors.ConfigError(
        f"data.pathfinder_resolution={resolution} is not one of the released resolutions "
        f"{', '.join(map(str, tfds_builders.RESOLUTIONS))}.")
  if difficulty not in tfds_builders.DIFFICULTY_DIRS:
    raise errors.ConfigError(
        f"data.pathfinder_difficulty={difficulty!r} is not one of "
        f"{', '.join(tfds_builders.DIFFICULTY_DIRS)}.")
  return (f"{tfds_builders.LraPathfinder.name}/"
          f"{tfds_builders.pathfinder_config_name(resolution, difficulty)}")


def generate(out_dir: str, resolution: int, difficulty: str,
             settings: ml_collections.ConfigDict) -> None:
  """Writes generated images in the release layout under `out_dir`, with a progress bar.

  The generator module is imported only here, so reading released data never
  depends on it. It resumes a partial directory, so an interrupted
  generation can be rerun.

  Args:
    out_dir: receives `pathfinder<R>/<difficulty dir>/{metadata, imgs}`.
    resolution: R.
    difficulty: 'baseline', 'intermediate' or 'hard'.
    settings: `data.pathfinder_generator` (num_images, images_per_file, seed).
  """
  try:
    generator = importlib.import_module(GENERATOR_MODULE)
  except ModuleNotFoundError as error:
    if error.name != GENERATOR_MODULE:
      raise
    raise errors.DataNotFoundError(
        f"Cannot generate Pathfinder data: {GENERATOR_MODULE} is not available in this "
        f"installation. Use the released data instead ({release.URL}).") from None
  directory = tfds_builders.DIFFICULTY_DIRS[difficulty]  # the generator's name for it
  with tqdm.tqdm(total=settings.num_images, unit="image",
                 desc=f"Generating pathfinder{resolution}/{directory}") as bar:
    generator.write_dataset(out_dir, resolution, directory, settings.num_images,
                            settings.images_per_file, settings.seed, progress=bar.update)


def ensure_prepared(data: ml_collections.ConfigDict) -> str:
  """Makes the configured dataset available in `data.data_dir` (module docstring); its name.

  Raises:
    errors.ConfigError: unknown resolution or difficulty.
    errors.DataNotFoundError: not prepared, not in the release directory, and
      not allowed (or able) to generate it.
  """
  resolution, difficulty = data.pathfinder_resolution, data.pathfinder_difficulty
  name = dataset_name(resolution, difficulty)
  if tfds_source.is_prepared(name, data.data_dir):
    return name
  release_dir = tfds_source.release_dir(data)
  relative = tfds_builders.pathfinder_relative_dir(resolution, difficulty)
  found = release.find(release_dir, relative)
  generated = found is not None and tf.io.gfile.exists(os.path.join(found, GENERATOR_MANIFEST))
  if data.generate_if_missing and (found is None or generated):
    generate(release_dir, resolution, difficulty, data.pathfinder_generator)
  tfds_source.prepare(name, data.data_dir, release_dir)
  return name


def read(data: ml_collections.ConfigDict, split: str) -> tuple[tf.data.Dataset, int]:
  """Examples of `split` in a fixed order, and their count.

  Args:
    data: the config's `data` section: `data_dir`, `release_dir`,
      `pathfinder_resolution`, `pathfinder_difficulty`, `max_length`,
      `black_pixels_are_padding`, `generate_if_missing`, `pathfinder_generator`.
    split: 'train', 'validation' or 'test'.

  Returns:
    Dicts of `inputs` int32 [<= max_length] and `targets` int32 [], and their count.

  Raises:
    errors.DataNotFoundError: see `ensure_prepared`.
  """
  name = ensure_prepared(data)
  return tfds_source.classification_examples(
      name, data.data_dir, TFDS_SPLITS[split], "image",
      lambda image: pixels.to_ids(image, data.black_pixels_are_padding, data.max_length))
