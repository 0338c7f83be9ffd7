"""Fixtures of the data tests: a small written LRA release and a shared TFDS directory."""

from __future__ import annotations

import pytest

import release_files


@pytest.fixture(scope="session")
def lra_release(tmp_path_factory) -> release_files.Release:
  """A nested release tree with all three tasks (Pathfinder: 32_hard)."""
  root = str(tmp_path_factory.mktemp("lra_release"))
  return release_files.Release(
      root=root, listops=release_files.write_listops(root), aan=release_files.write_aan(root),
      pathfinder={(32, "hard"): release_files.write_pathfinder(root)})


@pytest.fixture(scope="session")
def tfds_dir(tmp_path_factory) -> str:
  """A TFDS data directory shared by the tests; readers prepare into it on first use."""
  return str(tmp_path_factory.mktemp("tfds"))
