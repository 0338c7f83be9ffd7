"""Synthetic LRA data in the raw formats the real pipelines read, for benchmarks without the data.

    overrides = synthetic_data.prepare("retrieval", "/tmp/lra_synthetic")
    # {'data.data_dir': '/tmp/lra_synthetic/tfds', 'data.release_dir': ...}

`prepare(task, root)` writes (or arranges for the pipeline to generate) a few
thousand examples of `task` under `root` and returns the config overrides
that point `lra_jax.data.get_datasets` at them. Nothing is downloaded and the
pipelines run unchanged: only the examples are made up, at realistic sizes,
so tokenising, decoding and padding cost what they cost on the real data.

* ListOps: the package's own generator with the official settings (500 to
  2,000 tokens per example), written as `basic_{train,val,test}.tsv` by the
  reader itself (`data.generate_if_missing`).
* Pathfinder: the package's own generator (Pathfinder-32 hard) in the
  release layout, prepared as `lra_pathfinder/32_hard` by the reader itself.
* Retrieval: `tsv_data/new_aan_pairs.{train,eval,test}.tsv` in the release
  format (`label<TAB>id1<TAB>id2<TAB>text1<TAB>text2`, float labels), prepared
  as `lra_retrieval` by the reader. Documents are words of ASCII prose; their
  lengths are log-normal around 6 KB (an assumption: long enough that most
  are cut by the 4,000-token limit, as papers are).
* Text: TFDS `imdb_reviews/plain_text` written by a subclass of the real
  builder, so the reader opens real TFDS files under the real name and
  version; review lengths are log-normal with IMDB's median (about 1 KB) and
  a tail to 14 KB.
* Image: TFDS `cifar10` the same way, random 32x32x3 images.

Everything is skipped when already there, so a kept `root` is reused.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

TASKS = ("listops", "text", "retrieval", "image", "pathfinder")
# Examples per split. Every training split (the readers' slices included)
# is a multiple of 512, so an epoch is a whole number of batches for every
# config's batch size and a benchmark can time whole epochs.
NUM_TRAIN = 2_048
NUM_EVAL = 256
NUM_IMAGES = 5_120  # cifar10 train; the reader's train split is its first 90%, 4,608
NUM_PATHFINDER_IMAGES = 2_560  # the reader's train split is the first 80%, 2,048
# Log-normal byte lengths: (median, sigma, min, max).
REVIEW_BYTES = (1_000, 0.7, 50, 14_000)
DOCUMENT_BYTES = (6_000, 0.8, 300, 60_000)
# The release's AAN file suffix of each split.
AAN_FILES = {"train": "train", "validation": "eval", "test": "test"}

_WORDS = ("the of and a to in is was that this it with for as film on but not his are by be "
          "he an at one who from they all have her has you so like just about more or some "
          "what there very when time story out good can only even would which their its "
          "model results we our paper method data table section approach task language "
          "proposed using based show training corpus translation parsing semantic").split()


def _lengths(rng: np.random.Generator, count: int, spec: tuple[float, float, int, int]
             ) -> np.ndarray:
  median, sigma, low, high = spec
  return np.clip(rng.lognormal(np.log(median), sigma, count), low, high).astype(int)


def _prose(rng: np.random.Generator, lengths: np.ndarray) -> list[str]:
  """ASCII prose of the given byte lengths (no tab, no newline), cut from one corpus."""
  corpus = " ".join(rng.choice(_WORDS, size=int(lengths.max()) // 2 + 1_000)) + " "
  starts = rng.integers(0, len(corpus) - lengths.max(), len(lengths))
  return [corpus[s:s + n].strip().capitalize() + "." for s, n in zip(starts, lengths)]


def _labels(rng: np.random.Generator, count: int, num_classes: int) -> list[int]:
  return [int(x) for x in rng.integers(0, num_classes, count)]


# Subclasses of the real builders that yield generated examples instead of
# downloading; skip_registration keeps the real names bound to the real ones.
_IMDB = tfds.builder_cls("imdb_reviews")
_CIFAR10 = tfds.builder_cls("cifar10")

with tfds.core.registered.skip_registration():

  class _SyntheticImdb(_IMDB):
    """imdb_reviews/plain_text with generated reviews of IMDB-like lengths."""

    name = "imdb_reviews"

    def _split_generators(self, dl_manager):
      del dl_manager
      return {"train": self._generate_examples(NUM_TRAIN, 1),
              "test": self._generate_examples(NUM_EVAL, 2)}

    def _generate_examples(self, count, seed):  # pylint: disable=arguments-differ
      rng = np.random.default_rng(seed)
      reviews = _prose(rng, _lengths(rng, count, REVIEW_BYTES))
      for i, (review, label) in enumerate(zip(reviews, _labels(rng, count, 2))):
        yield i, {"text": review, "label": label}

  class _SyntheticCifar10(_CIFAR10):
    """cifar10 with random images."""

    name = "cifar10"

    def _split_generators(self, dl_manager):
      del dl_manager
      return {"train": self._generate_examples("train_", NUM_IMAGES, 1),
              "test": self._generate_examples("test_", NUM_EVAL, 2)}

    def _generate_examples(self, prefix, count, seed):  # pylint: disable=arguments-differ
      rng = np.random.default_rng(seed)
      for i in range(count):
        image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
        yield i, {"id": f"{prefix}{i:05d}", "image": image, "label": i % 10}


def _build(builder: tfds.core.DatasetBuilder) -> None:
  if not builder.is_prepared():
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False))


def write_aan(release_dir: str) -> None:
  """`<release_dir>/tsv_data/new_aan_pairs.{train,eval,test}.tsv`, unless all are there."""
  directory = os.path.join(release_dir, "tsv_data")
  paths = {split: os.path.join(directory, f"new_aan_pairs.{suffix}.tsv")
           for split, suffix in AAN_FILES.items()}
  if all(os.path.exists(path) for path in paths.values()):
    return
  os.makedirs(directory, exist_ok=True)
  rng = np.random.default_rng(0)
  for split, path in paths.items():
    count = NUM_TRAIN if split == "train" else NUM_EVAL
    texts = _prose(rng, _lengths(rng, 2 * count, DOCUMENT_BYTES))
    lines = [f"{label}.0\taan_{2 * i}\taan_{2 * i + 1}\t{texts[2 * i]}\t{texts[2 * i + 1]}\n"
             for i, label in enumerate(_labels(rng, count, 2))]
    # Renamed when whole, so a killed run never leaves a short file to reuse.
    with open(f"{path}.tmp", "w", encoding="ascii") as f:
      f.writelines(lines)
    os.replace(f"{path}.tmp", path)


def prepare(task: str, root: str) -> dict[str, Any]:
  """Makes synthetic `task` data available under `root`; the config overrides to read it.

  Args:
    task: one of TASKS.
    root: a directory for the data (created; reused when it already holds them).

  Returns:
    Dotted config paths -> values, e.g. {'data.data_dir': ...}. ListOps and
    Pathfinder are generated by the reader on first use (the returned
    `data.generate_if_missing`), so that cost falls in `get_datasets`.
  """
  tfds_dir = os.path.join(root, "tfds")
  if task == "listops":
    return {"data.data_dir": os.path.join(root, "listops"),
            "data.generate_if_missing": True,
            "data.listops_generator.num_train": NUM_TRAIN,
            "data.listops_generator.num_val": NUM_EVAL,
            "data.listops_generator.num_test": NUM_EVAL}
  if task == "pathfinder":
    return {"data.data_dir": tfds_dir,
            "data.release_dir": os.path.join(root, "pathfinder_release"),
            "data.generate_if_missing": True,
            "data.pathfinder_generator.num_images": NUM_PATHFINDER_IMAGES,
            "data.pathfinder_generator.images_per_file": 512}
  if task == "retrieval":
    release_dir = os.path.join(root, "retrieval_release")
    write_aan(release_dir)
    return {"data.data_dir": tfds_dir, "data.release_dir": release_dir}
  if task == "text":
    _build(_SyntheticImdb(config="plain_text", data_dir=tfds_dir))
    return {"data.data_dir": tfds_dir}
  if task == "image":
    _build(_SyntheticCifar10(data_dir=tfds_dir))
    return {"data.data_dir": tfds_dir}
  raise ValueError(f"Unknown task {task!r}; tasks: {', '.join(TASKS)}.")
