"""Shared fixtures of the trainer tests: fixture shards (grain.testing.fixtures.write_fixture_shards)."""

from __future__ import annotations

import os

import pytest

from grain.testing.fixtures import FixtureSpec, write_fixture_shards


@pytest.fixture(scope="session")
def train_shards(session_tmp):
    """4 shards × 12 ok rows (0–3 boxes each) + 1 decode_error row per shard: 48 trainable rows."""
    d = os.path.join(session_tmp, "trainer-shards")
    if not os.path.isdir(d):
        write_fixture_shards(d, FixtureSpec(num_shards=4, rows_per_shard=12, max_objects=3, min_objects=0,
                                            error_rows_per_shard=1, seed=3, width=72, height=64))
    return d


@pytest.fixture(scope="session")
def boxless_shards(session_tmp):
    """2 shards whose rows have no boxes at all (L_ic only)."""
    d = os.path.join(session_tmp, "trainer-shards-nobox")
    if not os.path.isdir(d):
        write_fixture_shards(d, FixtureSpec(num_shards=2, rows_per_shard=8, max_objects=0, min_objects=0, seed=5))
    return d


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """One intra-op thread per test (restored after): on a shared 2-core machine oversubscribed
    OpenMP threads made tiny CPU steps ~10× slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
