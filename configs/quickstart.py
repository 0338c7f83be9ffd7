"""Quickstart: ListOps generated offline, short enough to train on a laptop CPU.

    ./run.sh quickstart
    python -m lra_jax.train --config=configs/quickstart.py --workdir=runs/quickstart

The first run generates 20,000 / 1,000 / 1,000 ListOps expressions of 11 to
63 tokens (nesting depth <= 6, <= 5 arguments per operator) into
data/listops_quickstart/ with the LRA ListOps algorithm, then trains a
2-layer softmax Transformer under the official LRA protocol with a shorter
schedule, and evaluates the final and the best-by-validation checkpoints.

Measured on a 2-core CPU (fresh clone, install included): 6 min 48 s; test
accuracy 36.8% (validation 39.9%) against a majority-class baseline of 12.2%.
"""

from lra_jax import base_config


def get_config():
  config = base_config.get_config("listops", "softmax", "official")
  config.data.update(data_dir="data/listops_quickstart", generate_if_missing=True,
                     max_length=64, padded_length=64)
  config.data.listops_generator.update(num_train=20_000, num_val=1_000, num_test=1_000,
                                       min_length=10, max_length=64, max_depth=6, max_args=5)
  config.model.update(emb_dim=64, num_heads=4, num_layers=2, qkv_dim=64, mlp_dim=128,
                      classifier_hidden_dims=(128,))
  config.train.update(num_train_steps=3_000, warmup_steps=500, eval_every_steps=500,
                      log_every_steps=100, checkpoint_every_steps=500)
  return config
