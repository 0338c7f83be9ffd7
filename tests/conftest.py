"""Test set-up: 4 simulated CPU devices, so the data-parallel code really shards.

The environment must be set before jax is imported anywhere.
"""

import os

os.environ["JAX_PLATFORMS"] = "cpu"
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
  os.environ["XLA_FLAGS"] = f"{_flags} --xla_force_host_platform_device_count=4".strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Test programs are small and run once: XLA's optimisation passes cost more
# than they save (the suite takes about half the time without them).
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")

import jax  # noqa: E402
import pytest  # noqa: E402

NUM_DEVICES = 4


@pytest.fixture(scope="session", autouse=True)
def _four_devices():
  assert jax.device_count() == NUM_DEVICES, (
      f"tests expect {NUM_DEVICES} simulated devices, found {jax.devices()}")
