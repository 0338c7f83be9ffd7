"""One process of a multi-process run on the CPU backend (run by test_multiprocess.py).

python tests/multiprocess_worker.py --process_id=I --num_processes=N \
    --coordinator=127.0.0.1:PORT --out=DIR

Joins the run through jax.distributed.initialize (gloo collectives between
processes, each with the simulated CPU devices XLA_FLAGS gives it), feeds its
process-local slice of one fixed global batch through parallel.global_batch,
takes one train step over the mesh of every process's devices, and writes the
loss, accuracy and parameters it sees to DIR/process_I.npz.

`one_step(mesh, local_rows)` is also what the test runs in one process (with
`local_rows` = the whole batch) for the reference.
"""

from __future__ import annotations

import argparse
import functools
import pathlib

import jax
import numpy as np

from lra_jax import base_config, models, parallel, steps, trainer

GLOBAL_BATCH = 8


def tiny_config():
  """ListOps-shaped, official protocol, small enough for a few seconds on a CPU."""
  config = base_config.get_config("listops", "softmax", "official")
  config.data.update(max_length=48, padded_length=48, batch_size=GLOBAL_BATCH,
                     eval_batch_size=GLOBAL_BATCH)
  config.model.update(emb_dim=16, num_heads=2, num_layers=1, qkv_dim=16, mlp_dim=32,
                      classifier_hidden_dims=(32,))
  # A nonzero learning rate at step 0, so the step really moves the parameters.
  config.train.update(factors="constant", learning_rate=0.5)
  return config


def global_batch_rows() -> dict[str, np.ndarray]:
  """The fixed global batch every run of the comparison uses."""
  rng = np.random.default_rng(0)
  length = tiny_config().data.padded_length
  lengths = rng.integers(5, length, GLOBAL_BATCH)
  inputs = rng.integers(1, 17, (GLOBAL_BATCH, length)) * (np.arange(length)[None] < lengths[:, None])
  return {"inputs": inputs.astype(np.int32),
          "targets": rng.integers(0, 10, GLOBAL_BATCH).astype(np.int32),
          "valid": np.ones(GLOBAL_BATCH, bool)}


def local_rows(process_index: int, process_count: int) -> dict[str, np.ndarray]:
  """This process's contiguous slice of the global batch (what its data shard would read)."""
  size = GLOBAL_BATCH // process_count
  rows = slice(process_index * size, (process_index + 1) * size)
  return {name: value[rows] for name, value in global_batch_rows().items()}


def one_step(mesh: jax.sharding.Mesh, batch: dict[str, np.ndarray]):
  """(params as numpy, {'loss', 'accuracy'}) after one train step from a fixed init."""
  config = tiny_config()
  model = models.create_model(config)
  state = trainer.create_train_state(config, model, jax.random.key(0), mesh)
  step = jax.jit(functools.partial(steps.train_step, model=model, input_names=("inputs",)),
                 in_shardings=(parallel.replicated(mesh), parallel.batch_sharded(mesh),
                               parallel.replicated(mesh)),
                 out_shardings=parallel.replicated(mesh))
  state, metrics = step(state, parallel.global_batch(batch, mesh), jax.random.key(1))
  # Replicated: this process's first shard holds the whole value.
  params = jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), state.params)
  computed = {name: float(value) for name, value in metrics.compute().items()}
  return params, computed


def flatten(params) -> dict[str, np.ndarray]:
  """{'encoder/.../kernel': array}: the parameter tree as npz-friendly names."""
  leaves = jax.tree_util.tree_flatten_with_path(params)[0]
  return {"/".join(str(getattr(k, "key", k)) for k in path): value for path, value in leaves}


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--process_id", type=int, required=True)
  parser.add_argument("--num_processes", type=int, required=True)
  parser.add_argument("--coordinator", required=True)
  parser.add_argument("--out", required=True)
  args = parser.parse_args()
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=args.coordinator,
                             num_processes=args.num_processes, process_id=args.process_id,
                             initialization_timeout=60)
  assert jax.process_count() == args.num_processes, jax.process_count()
  params, metrics = one_step(parallel.create_mesh(),
                             local_rows(jax.process_index(), jax.process_count()))
  out = pathlib.Path(args.out) / f"process_{args.process_id}.npz"
  np.savez(out, loss=metrics["loss"], accuracy=metrics["accuracy"],
           num_devices=jax.device_count(), num_local_devices=jax.local_device_count(),
           **{f"params/{name}": value for name, value in flatten(params).items()})
  jax.distributed.shutdown()


if __name__ == "__main__":
  main()
