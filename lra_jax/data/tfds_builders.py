"""TFDS builders for the LRA release's own files: lra_listops, lra_retrieval, lra_pathfinder.

Each builder reads the extracted release (lra_official_jax.md §0.1) from its
manual directory, nested `lra_release/lra_release/` or flat, and never
downloads anything. They store the raw data (source strings, document byte
strings, PNG images), so token lengths, byte cut-offs and pixel ids are
chosen when reading (lra_jax/data/<task>.py), not baked in here.

    builder = tfds.builder('lra_pathfinder/32_hard', data_dir=TFDS_DIR)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=RELEASE_DIR))

(`tfds_source.prepare` and `preprocess/build_tfds.py` do exactly this.)
Importing this module registers the three names with TFDS.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import struct
from typing import Iterator

from absl import logging
import tensorflow as tf
import tensorflow_datasets as tfds

from lra_jax import errors
from lra_jax.data import release

_INSTRUCTIONS = (
    f"Download the LRA release from {release.URL}, extract it, and pass the extracted "
    f"`lra_release` directory as the manual directory (nested `lra_release/lra_release/` "
    f"and flat layouts both work).")


def _release_root(dl_manager: tfds.download.DownloadManager) -> str:
  """The manual directory, or '' when TFDS finds it missing or empty."""
  try:
    return os.fspath(dl_manager.manual_dir)
  except AssertionError:  # TFDS's way of saying the directory is missing or empty
    return ""


# Why a Pathfinder directory may be missing: it can also be generated.
PATHFINDER_GENERATE_HINT = (
    "Pathfinder images can also be generated offline instead: "
    "`python preprocess/generate_pathfinder.py` (then pass its output directory as the release "
    "directory), or train with --config.data.generate_if_missing=True.")


def _require(dataset: str, root: str, relative: str, extra: str = "") -> str:
  """`release.find(root, relative)`, or errors.DataNotFoundError naming what is missing."""
  path = release.find(root, relative)
  if path is None:
    raise errors.DataNotFoundError(release.missing_message(dataset, root or None, relative, extra))
  return path


class LraListops(tfds.core.GeneratorBasedBuilder):
  """ListOps: `listops-1000/basic_{train,val,test}.tsv` (§1.1), raw Source strings."""

  name = "lra_listops"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "The release's three TSVs, rows in file order."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = _INSTRUCTIONS
  # TFDS split -> file suffix in the release.
  FILE_SPLITS = {"train": "train", "validation": "val", "test": "test"}

  MISSING_HINT = ""

  def release_files(self) -> str:
    """What this dataset needs from the release, for error messages."""
    return "listops-1000/basic_{train,val,test}.tsv"

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description="LRA ListOps: nested MIN/MAX/MED/SM expressions over digits; the "
                    "label is the value (10 classes).",
        features=tfds.features.FeaturesDict({
            "source": tfds.features.Text(),
            "target": tfds.features.ClassLabel(num_classes=10),
        }),
        supervised_keys=("source", "target"),
        homepage="https://github.com/google-research/long-range-arena",
    )

  def _split_generators(self, dl_manager):
    root = _release_root(dl_manager)
    paths = {split: _require(self.name, root, f"listops-1000/basic_{suffix}.tsv")
             for split, suffix in self.FILE_SPLITS.items()}
    return {split: self._generate_examples(path) for split, path in paths.items()}

  def _generate_examples(self, path: str) -> Iterator[tuple[int, dict]]:
    with tf.io.gfile.GFile(path) as f:
      rows = csv.reader(f, delimiter="\t")
      header = next(rows, None)
      if header != ["Source", "Target"]:
        raise ValueError(f"{path}: expected the header 'Source<TAB>Target', found {header}.")
      for index, (source, target) in enumerate(rows):
        yield index, {"source": source, "target": int(target)}


class LraRetrieval(tfds.core.GeneratorBasedBuilder):
  """AAN document matching: `tsv_data/new_aan_pairs.{train,eval,test}.tsv` (§1.3).

  Each line is `label<TAB>id1<TAB>id2<TAB>text1<TAB>text2` with no header and
  no quoting; the label is written as a float ('1.0'). Texts are stored as
  the file's bytes, untouched (not decoded, not cut).
  """

  name = "lra_retrieval"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "The release's three TSVs, raw document bytes, rows in file order."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = _INSTRUCTIONS
  FILE_SPLITS = {"train": "train", "validation": "eval", "test": "test"}

  MISSING_HINT = ""

  def release_files(self) -> str:
    """What this dataset needs from the release, for error messages."""
    return "tsv_data/new_aan_pairs.{train,eval,test}.tsv"

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description="LRA Retrieval: pairs of ACL Anthology Network papers; the label says "
                    "whether one cites the other.",
        features=tfds.features.FeaturesDict({
            "id1": tfds.features.Text(),
            "id2": tfds.features.Text(),
            "text1": tfds.features.Text(),
            "text2": tfds.features.Text(),
            "label": tfds.features.ClassLabel(num_classes=2),
        }),
        homepage="https://github.com/google-research/long-range-arena",
    )

  def _split_generators(self, dl_manager):
    root = _release_root(dl_manager)
    paths = {split: _require(self.name, root, f"tsv_data/new_aan_pairs.{suffix}.tsv")
             for split, suffix in self.FILE_SPLITS.items()}
    return {split: self._generate_examples(path) for split, path in paths.items()}

  def _generate_examples(self, path: str) -> Iterator[tuple[int, dict]]:
    with tf.io.gfile.GFile(path, "rb") as f:
      for index, line in enumerate(f):
        line = line.rstrip(b"\n").removesuffix(b"\r")  # TF's CSV reader accepts both endings
        if not line:
          continue
        fields = line.split(b"\t")
        if len(fields) != 5:
          raise ValueError(f"{path}, line {index + 1}: expected 5 tab-separated fields "
                           f"(label id1 id2 text1 text2), found {len(fields)}.")
        label, id1, id2, text1, text2 = fields
        yield index, {"label": int(float(label)), "id1": id1, "id2": id2,
                      "text1": text1, "text2": text2}


RESOLUTIONS = (32, 64, 128, 256)
# Difficulty -> directory in the release (§1.5.1; the official split names
# are easy / intermediate / hard).
DIFFICULTY_DIRS = {"baseline": "curv_baseline", "intermediate": "curv_contour_length_9",
                   "hard": "curv_contour_length_14"}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclasses.dataclass(eq=False)
class PathfinderConfig(tfds.core.BuilderConfig):
  """One (resolution, difficulty) directory of the release, e.g. '32_hard'."""

  resolution: int = 32
  difficulty: str = "hard"


def pathfinder_config_name(resolution: int, difficulty: str) -> str:
  return f"{resolution}_{difficulty}"


def pathfinder_relative_dir(resolution: int, difficulty: str) -> str:
  """The directory of one config inside the release, e.g. 'pathfinder32/curv_contour_length_14'."""
  return f"pathfinder{resolution}/{DIFFICULTY_DIRS[difficulty]}"


def png_size(png: bytes) -> tuple[int, int]:
  """(width, height) from a PNG's IHDR chunk, without decoding the image."""
  if png[:8] != PNG_SIGNATURE or png[12:16] != b"IHDR":
    raise ValueError("not a PNG file")
  return struct.unpack(">II", png[16:24])


class LraPathfinder(tfds.core.GeneratorBasedBuilder):
  """Pathfinder: `pathfinder<R>/<difficulty dir>/` of the release (§1.5, §1.5.1).

  Reads the metadata files as the official builder does: every
  `metadata/*.npy` (text, despite the extension) is decoded as UTF-8 and
  split on '\\n' with the last piece dropped (so a file without a final
  newline loses its last line, as officially); each line is split on single
  spaces into m, the image is `<dir>/m[0]/m[1]`, the label `int(m[3])`, and
  the key `m[0]_m[1]_<i>` with i counting lines of that file from 1, as the
  official keys (TFDS stores examples in the order of a hash of the key, so
  the 80/10/10 slices are a fixed pseudo-random split).

  Empty PNG files (some exist in the release) are skipped here, where the
  official reader filters them after slicing; the 80/10/10 slices are
  therefore taken over the non-empty images, and split sizes are exact.

  One split, 'train', holding every image; readers slice it 80/10/10.
  """

  name = "lra_pathfinder"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "PNG images and labels of one directory; empty PNGs skipped."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      f"{_INSTRUCTIONS} Or generate images in the same layout with "
      f"lra_jax.data.pathfinder_generator and pass their directory instead.")
  BUILDER_CONFIGS = [
      PathfinderConfig(name=pathfinder_config_name(resolution, difficulty),
                       resolution=resolution, difficulty=difficulty,
                       description=f"{resolution}x{resolution} images from "
                                   f"{pathfinder_relative_dir(resolution, difficulty)}")
      for resolution in RESOLUTIONS for difficulty in DIFFICULTY_DIRS]
  DEFAULT_BUILDER_CONFIG_NAME = pathfinder_config_name(32, "hard")
  MISSING_HINT = PATHFINDER_GENERATE_HINT

  def release_files(self) -> str:
    """What this dataset needs from the release, for error messages."""
    config = self.builder_config
    return f"{pathfinder_relative_dir(config.resolution, config.difficulty)}/{{metadata,imgs}}"

  def _info(self) -> tfds.core.DatasetInfo:
    resolution = self.builder_config.resolution
    return self.dataset_info_from_configs(
        description="LRA Pathfinder: are the two dots joined by a dashed path? (2 classes)",
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(resolution, resolution, 1),
                                         encoding_format="png"),
            "label": tfds.features.ClassLabel(num_classes=2),
        }),
        supervised_keys=("image", "label"),
        homepage="https://github.com/drewlinsley/pathfinder",
        citation="""@inproceedings{Kim*2020Disentangling,
  title={Disentangling neural mechanisms for perceptual grouping},
  author={Junkyung Kim* and Drew Linsley* and Kalpit Thakkar and Thomas Serre},
  booktitle={International Conference on Learning Representations},
  year={2020},
  url={https://openreview.net/forum?id=HJxrVA4FDS}}""",
    )

  def _split_generators(self, dl_manager):
    config = self.builder_config
    relative = pathfinder_relative_dir(config.resolution, config.difficulty)
    dataset, root = f"{self.name}/{config.name}", _release_root(dl_manager)
    directory = _require(dataset, root, relative, self.MISSING_HINT)
    metadata = sorted(tf.io.gfile.glob(os.path.join(directory, "metadata", "*.npy")))
    if not metadata:
      raise errors.DataNotFoundError(release.missing_message(
          dataset, root, f"{relative}/metadata/*.npy", self.MISSING_HINT))
    return {"train": self._generate_examples(directory, metadata)}

  def _generate_examples(self, directory: str, metadata: list[str]) -> Iterator[tuple[str, dict]]:
    resolution = self.builder_config.resolution
    skipped = 0
    for metadata_path in metadata:
      with tf.io.gfile.GFile(metadata_path, "rb") as f:
        lines = f.read().decode("utf-8").split("\n")[:-1]
      for example_id, line in enumerate(lines, start=1):
        m = line.split(" ")
        if len(m) < 4:
          raise ValueError(f"{metadata_path}, line {example_id}: expected at least 4 "
                           f"space-separated fields (directory, file, _, label), got {line!r}.")
        path = os.path.join(directory, m[0], m[1])
        if not tf.io.gfile.exists(path):
          raise errors.DataNotFoundError(
              f"The Pathfinder data in {directory} is incomplete: {path}, listed in "
              f"{metadata_path}, does not exist. Extract the release ({release.URL}) or "
              f"generate the images again.")
        with tf.io.gfile.GFile(path, "rb") as f:
          png = f.read()
        if not png:
          skipped += 1
          continue
        try:
          size = png_size(png)
        except ValueError as error:
          raise ValueError(f"{path}: {error}") from None
        if size != (resolution, resolution):
          raise ValueError(f"{path} is {size[0]}x{size[1]}, expected {resolution}x{resolution}; "
                           f"is the directory of the right resolution?")
        yield "_".join([m[0], m[1], str(example_id)]), {"image": png, "label": int(m[3])}
    if skipped:
      logging.info("Skipped %d empty PNG files in %s.", skipped, directory)
