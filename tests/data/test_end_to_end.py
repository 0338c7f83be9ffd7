"""Retrieval and Pathfinder train for a few steps through the real code path.

(Text and Image: test_text_image.py; ListOps: tests/test_trainer.py.)

Data: the small written release (conftest.py), or Pathfinder images from the
generator, prepared into TFDS on first use by the readers, batched by the
shared pipeline, fed to the trainer.
"""

import json

import numpy as np

from lra_jax import trainer
from tiny import tiny_config


def test_retrieval_trains_evaluates_and_reports(lra_release, tfds_dir, tmp_path):
  config = tiny_config("retrieval", tfds_dir, lra_release.root, 32)
  state = trainer.train_and_evaluate(config, tmp_path)
  assert int(state.step) == 2
  results = json.loads((tmp_path / trainer.RESULTS_FILE).read_text())
  for split in ("validation", "test"):
    metrics = results["final"][split]
    assert 0.0 <= metrics["accuracy"] <= 1.0 and np.isfinite(metrics["loss"])
  assert 0.0 < results["test_majority_class_accuracy"] <= 1.0


def test_pathfinder_trains_on_data_generated_when_missing(tmp_path):
  """The documented offline path: generate_if_missing writes images, TFDS prepares, we train.

  (Pathfinder batches from the released layout are checked in test_pathfinder.py.)
  """
  config = tiny_config("pathfinder", str(tmp_path / "tfds"), "", 64)
  config.data.generate_if_missing = True
  config.data.pathfinder_generator.update(num_images=20, images_per_file=10, seed=1)
  state = trainer.train_and_evaluate(config, tmp_path / "run")
  assert int(state.step) == 2
  generated = tmp_path / "tfds" / "downloads" / "manual" / "pathfinder32" / "curv_contour_length_14"
  assert sorted(p.name for p in (generated / "metadata").iterdir()) == ["0.npy", "1.npy"]
  results = json.loads((tmp_path / "run" / trainer.RESULTS_FILE).read_text())
  assert np.isfinite(results["final"]["test"]["loss"])
