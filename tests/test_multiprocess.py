"""Multi-host data parallelism, simulated: 2 processes on localhost with 2 CPU devices each.

Each process runs tests/multiprocess_worker.py: jax.distributed.initialize
with gloo collectives, its half of one global batch fed through
parallel.global_batch, one train step. The result must equal one process
with 4 devices taking the same step on the same global batch.
"""

import contextlib
import os
import pathlib
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

import multiprocess_worker as worker
from lra_jax import parallel

ROOT = pathlib.Path(__file__).resolve().parents[1]
NUM_PROCESSES = 2
TIMEOUT_S = 150


def _free_loopback_port() -> int:
  with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
    sock.bind(("127.0.0.1", 0))
    return sock.getsockname()[1]


def _run_processes(out: pathlib.Path) -> list[str]:
  """Starts every process, waits for all; kills any left over. Returns their logs."""
  env = {**os.environ, "JAX_PLATFORMS": "cpu",
         "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
         "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
  coordinator = f"127.0.0.1:{_free_loopback_port()}"
  logs = [out / f"log_{i}.txt" for i in range(NUM_PROCESSES)]
  processes = []
  try:
    for i, log in enumerate(logs):
      with open(log, "w") as stream:
        processes.append(subprocess.Popen(
            [sys.executable, str(ROOT / "tests" / "multiprocess_worker.py"), f"--process_id={i}",
             f"--num_processes={NUM_PROCESSES}", f"--coordinator={coordinator}", f"--out={out}"],
            cwd=ROOT, env=env, stdout=stream, stderr=subprocess.STDOUT))
    for process in processes:
      process.wait(timeout=TIMEOUT_S)
  finally:
    for process in processes:
      if process.poll() is None:
        process.kill()
        process.wait()
  texts = [log.read_text() for log in logs]
  for process, text in zip(processes, texts):
    assert process.returncode == 0, text[-3000:]
  return texts


@pytest.mark.multiprocess
def test_two_processes_take_the_same_step_as_one_process_with_four_devices(tmp_path):
  _run_processes(tmp_path)
  results = [np.load(tmp_path / f"process_{i}.npz") for i in range(NUM_PROCESSES)]
  reference_params, reference = worker.one_step(parallel.create_mesh(), worker.global_batch_rows())
  assert len(jax.devices()) == 4
  reference_params = {f"params/{k}": v for k, v in worker.flatten(reference_params).items()}

  for result in results:
    assert int(result["num_devices"]) == 4 and int(result["num_local_devices"]) == 2
    np.testing.assert_allclose(result["loss"], reference["loss"], rtol=1e-6)
    np.testing.assert_allclose(result["accuracy"], reference["accuracy"])
    assert sorted(k for k in result.files if k.startswith("params/")) == sorted(reference_params)
    for name, value in reference_params.items():
      np.testing.assert_allclose(result[name], value, rtol=1e-5, atol=1e-6, err_msg=name)
  # Replicated parameters: every process holds the same values, bit for bit.
  for name in reference_params:
    np.testing.assert_array_equal(results[0][name], results[1][name])
  # The step moved the parameters (the comparison is not between two inits).
  assert not np.allclose(reference_params["params/head/logits/bias"], 0.0)
