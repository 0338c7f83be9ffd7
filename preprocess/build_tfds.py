"""Prepares the TFDS datasets the LRA tasks read, once, before training.

    python preprocess/build_tfds.py --release_dir=~/lra_release --data_dir=~/tfds
    python preprocess/build_tfds.py --release_dir=~/lra_release --data_dir=~/tfds \
        lra_pathfinder/128_hard
    python preprocess/build_tfds.py --data_dir=~/tfds imdb_reviews/plain_text cifar10  # online

lra_listops, lra_retrieval and lra_pathfinder/<R>_<difficulty> (R in 32, 64,
128, 256; difficulty baseline, intermediate or hard) are built from the
extracted release (https://storage.googleapis.com/long-range-arena/lra_release.gz),
or from generated data in its layout, without downloading anything;
imdb_reviews and cifar10 are downloaded by TFDS. Datasets already prepared
are skipped, and an interrupted run can simply be started again. Train with
--config.data.data_dir=DATA_DIR.
"""

from __future__ import annotations

import argparse
import sys

import tqdm

from lra_jax import errors
from lra_jax.data import tfds_source

# What the five tasks read with their default configs.
DEFAULT_DATASETS = ("lra_listops", "lra_retrieval", "lra_pathfinder/32_hard",
                    "imdb_reviews/plain_text", "cifar10")


def build(names: list[str], data_dir: str, release_dir: str) -> None:
  """Prepares each of `names` in `data_dir`, with one progress bar over them."""
  for name in (bar := tqdm.tqdm(names, unit="dataset")):
    bar.set_description(name)
    if name.split("/")[0] in tfds_source.LOCAL_DATASETS:
      tfds_source.prepare(name, data_dir, release_dir)
    else:
      tfds_source.download_and_prepare(name, data_dir)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("datasets", nargs="*", default=list(DEFAULT_DATASETS),
                      help=f"TFDS names (default: {' '.join(DEFAULT_DATASETS)}).")
  parser.add_argument("--data_dir", default="",
                      help="TFDS data directory to write to (default: TFDS's own).")
  parser.add_argument("--release_dir", default="",
                      help="The extracted lra_release directory, or generated data in its "
                           "layout (default: DATA_DIR/downloads/manual).")
  args = parser.parse_args(argv)
  release_dir = args.release_dir or tfds_source.default_release_dir(args.data_dir)
  try:
    build(args.datasets, args.data_dir, release_dir)
  except errors.DataNotFoundError as error:
    print(f"error: {error}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
