"""Writes a small LRA release in the release's exact raw formats, for the data tests.

* ListOps: `listops-1000/basic_{train,val,test}.tsv`, header `Source<TAB>Target`.
* Retrieval: `tsv_data/new_aan_pairs.{train,eval,test}.tsv`, no header, lines
  `label<TAB>id1<TAB>id2<TAB>text1<TAB>text2` with float labels ('1.0') and
  raw bytes (some not UTF-8, one line ending in CRLF).
* Pathfinder: `pathfinder<R>/<difficulty dir>/metadata/<k>.npy` text files of
  `imgs/<k> sample_<j>.png <k> <label> ...` lines, and the PNGs they list,
  written with tf.io.encode_png; two of them are empty files, as in the release.

Everything is generated here; nothing is downloaded.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import tensorflow as tf

from lra_jax.data import listops_generator, tfds_builders

LISTOPS_SETTINGS = listops_generator.GeneratorSettings(
    num_train=24, num_val=6, num_test=5, min_length=3, max_length=30, max_depth=4, max_args=3,
    seed=5)
AAN_FILES = {"train": "train", "validation": "eval", "test": "test"}
AAN_SIZES = {"train": 12, "validation": 5, "test": 4}
# Lines per metadata file; (file, line) pairs whose PNG is an empty file.
PATHFINDER_LINES = (8, 8, 6)
PATHFINDER_EMPTY = ((0, 3), (2, 0))
PATHFINDER_NON_EMPTY = sum(PATHFINDER_LINES) - len(PATHFINDER_EMPTY)  # 20: 16 / 2 / 2


@dataclasses.dataclass
class Release:
  """What was written, to compare readers against."""

  root: str
  listops: dict[str, list[tuple[str, int]]]  # 'train' | 'val' | 'test' -> (source, label)
  aan: dict[str, list[tuple[int, bytes, bytes]]]  # our split -> (label, text1, text2)
  pathfinder: dict[tuple[int, str], dict[bytes, int]]  # (R, difficulty) -> {pixels: label}


def _base(root: str, nested: bool) -> str:
  return os.path.join(root, "lra_release") if nested else root


def write_listops(root: str, nested: bool = True) -> dict[str, list[tuple[str, int]]]:
  listops_generator.write_tsvs(os.path.join(_base(root, nested), "listops-1000"), LISTOPS_SETTINGS)
  return listops_generator.generate(LISTOPS_SETTINGS)


def aan_document(rng: np.random.Generator, length: int) -> bytes:
  """Random bytes without tab or newline (they would break the TSV)."""
  values = rng.integers(0, 256, length)
  return bytes(int(v) for v in values if v not in (9, 10, 13))


def write_aan(root: str, nested: bool = True) -> dict[str, list[tuple[int, bytes, bytes]]]:
  rng = np.random.default_rng(7)
  directory = os.path.join(_base(root, nested), "tsv_data")
  os.makedirs(directory, exist_ok=True)
  rows = {}
  for split, size in AAN_SIZES.items():
    rows[split] = [(i % 2, aan_document(rng, int(rng.integers(1, 40))),
                    aan_document(rng, int(rng.integers(1, 40)))) for i in range(size)]
    lines = [b"\t".join([f"{label}.0".encode(), b"id%d" % i, b"id%d" % (i + 100), text1, text2])
             for i, (label, text1, text2) in enumerate(rows[split])]
    lines[-1] += b"\r"  # TF's CSV reader accepts CRLF, so must we
    with open(os.path.join(directory, f"new_aan_pairs.{AAN_FILES[split]}.tsv"), "wb") as f:
      f.write(b"\n".join(lines) + b"\n")
  return rows


def write_pathfinder(root: str, resolution: int = 32, difficulty: str = "hard",
                     nested: bool = True, lines_per_file=PATHFINDER_LINES,
                     empty=PATHFINDER_EMPTY, seed: int = 0) -> dict[bytes, int]:
  """Writes one difficulty directory; returns {non-empty image pixels (bytes): label}."""
  rng = np.random.default_rng(seed)
  directory = os.path.join(_base(root, nested),
                           tfds_builders.pathfinder_relative_dir(resolution, difficulty))
  os.makedirs(os.path.join(directory, "metadata"), exist_ok=True)
  images = {}
  for k, num_lines in enumerate(lines_per_file):
    os.makedirs(os.path.join(directory, "imgs", str(k)), exist_ok=True)
    lines = []
    for j in range(num_lines):
      label = int(rng.integers(0, 2))
      # Mostly black, as Pathfinder images are, with a few bright strokes.
      pixels = np.where(rng.random((resolution, resolution, 1)) < 0.8, 0,
                        rng.integers(1, 256, (resolution, resolution, 1))).astype(np.uint8)
      png = b"" if (k, j) in empty else tf.io.encode_png(pixels).numpy()
      with open(os.path.join(directory, "imgs", str(k), f"sample_{j}.png"), "wb") as f:
        f.write(png)
      if png:
        images[pixels.tobytes()] = label
      lines.append(f"imgs/{k} sample_{j}.png {k} {label} 14 1.8 0.8\n")
    with open(os.path.join(directory, "metadata", f"{k}.npy"), "w") as f:
      f.write("".join(lines))
  return images
