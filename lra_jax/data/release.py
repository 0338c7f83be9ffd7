"""Where files sit in the extracted LRA release, and what to say when they are missing.

The release (lra_official_jax.md §0.1) unpacks to a nested
`lra_release/lra_release/` directory, but people also point at the inner one
or flatten it. `find(root, 'tsv_data')` accepts all of these: it looks in
`root/lra_release/` first (the complete, nested copy; the outer level holds
a second `pathfinder128` that issue #38 suspects), then in `root/` itself.
"""

from __future__ import annotations

import os

import tensorflow as tf

URL = "https://storage.googleapis.com/long-range-arena/lra_release.gz"
NESTED_DIR = "lra_release"
BUILD_COMMAND = "python preprocess/build_tfds.py --release_dir=RELEASE_DIR --data_dir=TFDS_DIR"


def candidates(root: str, relative: str) -> list[str]:
  """Paths `relative` may have under `root`, in the order they are tried."""
  return [os.path.join(root, NESTED_DIR, relative), os.path.join(root, relative)]


def find(root: str, relative: str) -> str | None:
  """The first of `candidates(root, relative)` that exists, or None."""
  if not root:
    return None
  return next((path for path in candidates(root, relative) if tf.io.gfile.exists(path)), None)


def missing_message(dataset: str, root: str | None, missing: str, extra: str = "") -> str:
  """One paragraph: what is missing, where the release is, how to prepare `dataset`.

  Args:
    dataset: TFDS name being prepared, e.g. 'lra_pathfinder/32_hard'.
    root: the release directory that was searched ('' or None when none was given).
    missing: what is not there, e.g. 'tsv_data/new_aan_pairs.eval.tsv'.
    extra: a sentence appended at the end (e.g. how to generate the data instead).
  """
  if not root:
    problem = f"it needs {missing} from the LRA release, and no release directory was given"
  elif not tf.io.gfile.isdir(root):
    problem = f"it needs {missing} from the LRA release directory {root!r}, which does not exist"
  else:
    problem = (f"{missing} is missing from the LRA release directory {root!r} "
               f"(looked in {os.path.join(root, NESTED_DIR)}/ and {root}/)")
  message = (
      f"Cannot prepare TFDS dataset {dataset!r}: {problem}. This program never downloads "
      f"data. The release is published at {URL}; download it, extract it (`tar xzf "
      f"lra_release.gz`), then either run `{BUILD_COMMAND} {dataset}` once and train with "
      f"--config.data.data_dir=TFDS_DIR, or train with --config.data.release_dir=RELEASE_DIR "
      f"to prepare it on first use. An interrupted preparation is safe to rerun: TFDS "
      f"writes into an 'incomplete.*' directory and renames it only when done.")
  return f"{message} {extra}" if extra else message
