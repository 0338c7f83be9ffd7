"""Writes ListOps basic_{train,val,test}.tsv offline, as the LRA release lays them out.

    python preprocess/generate_listops.py --output_dir=data/listops
    python preprocess/generate_listops.py --output_dir=data/listops_short \
        --num_train=20000 --min_length=10 --max_length=128 --max_depth=6 --max_args=5

Defaults are the official generator's (96,000 / 2,000 / 2,000 examples of
501-1999 tokens); the output is a function of the arguments, --seed included.
Train on it with --config.data.data_dir=OUTPUT_DIR.
"""

import argparse
import dataclasses

import tqdm

from lra_jax.data import listops_generator


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--output_dir", required=True, help="Directory to write the three TSVs to.")
  for field in dataclasses.fields(listops_generator.GeneratorSettings):
    parser.add_argument(f"--{field.name}", type=int, default=field.default,
                        help=f"default {field.default}")
  args = vars(parser.parse_args())
  output_dir = args.pop("output_dir")
  settings = listops_generator.GeneratorSettings(**args)
  total = settings.num_train + settings.num_val + settings.num_test
  with tqdm.tqdm(total=total, unit="example", desc="ListOps") as bar:
    paths = listops_generator.write_tsvs(output_dir, settings, progress=bar.update)
  for path in paths:
    print(path)


if __name__ == "__main__":
  main()
