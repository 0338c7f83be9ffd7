"""Writes a Pathfinder data set offline, in the LRA release's layout.

    python preprocess/generate_pathfinder.py --output_dir=data/lra_release
    python preprocess/generate_pathfinder.py --output_dir=data/lra_release \
        --resolution=128 --difficulty=curv_contour_length_14 --workers=8

writes <output_dir>/pathfinder<R>/<difficulty>/{imgs/<k>/sample_<j>.png,
metadata/<k>.npy}. Defaults are the release's Pathfinder-32 hard split
(200 files of 1,000 images); the output is a function of the arguments, --seed
included. An interrupted run picks up where it stopped: complete files are kept.
"""

from __future__ import annotations

import argparse

import tqdm

from lra_jax.data import pathfinder_generator


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--output_dir", required=True,
                      help="Directory to hold pathfinder<resolution>/.")
  parser.add_argument("--resolution", type=int, default=32,
                      choices=pathfinder_generator.RESOLUTIONS, help="default 32")
  parser.add_argument("--difficulty", default="curv_contour_length_14",
                      choices=sorted(pathfinder_generator.DIFFICULTIES) + ["all"],
                      help="default curv_contour_length_14 (the LRA 'hard' split)")
  parser.add_argument("--num_images", type=int, default=200_000, help="default 200000")
  parser.add_argument("--images_per_file", type=int, default=1000, help="default 1000")
  parser.add_argument("--seed", type=int, default=0, help="default 0")
  parser.add_argument("--workers", type=int, default=1,
                      help="processes generating files in parallel (default 1)")
  args = parser.parse_args()
  difficulties = (sorted(pathfinder_generator.DIFFICULTIES) if args.difficulty == "all"
                  else [args.difficulty])
  for difficulty in difficulties:
    with tqdm.tqdm(total=args.num_images, unit="img",
                   desc=f"pathfinder{args.resolution}/{difficulty}") as bar:
      directory = pathfinder_generator.write_dataset(
          args.output_dir, args.resolution, difficulty, args.num_images,
          images_per_file=args.images_per_file, seed=args.seed, progress=bar.update,
          workers=args.workers)
    print(directory)


if __name__ == "__main__":
  main()
