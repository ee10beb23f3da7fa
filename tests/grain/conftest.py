"""Shared tiny-model fixtures for the grain tests: one synthetic batch, built once."""

import pytest
import torch

from grain.config import ModelConfig
from grain.data import make_batch, sample_from_row
from grain.common.schema import read_table
from grain.testing.fixtures import write_fixture_shards


@pytest.fixture(scope="session")
def fixture_rows(tmp_path_factory):
    """16 synthetic shard rows (0–3 boxes each, exact boxes, some repeated descriptions)."""
    d = tmp_path_factory.mktemp("grain-fixture")
    paths = write_fixture_shards(str(d), num_shards=1, rows_per_shard=16, seed=3)
    return read_table(paths[0]).to_pylist()


@pytest.fixture(scope="session")
def tiny_cfg():
    return ModelConfig.preset("tiny")


@pytest.fixture(scope="session")
def tiny_batch(fixture_rows, tiny_cfg):
    """A batch of the 16 rows with each row's alt-text as caption (deterministic)."""
    samples = []
    for r in fixture_rows:
        s = sample_from_row(r, tiny_cfg)
        s["caption"] = r["source_caption"]
        samples.append(s)
    return make_batch(samples, tiny_cfg)


@pytest.fixture(scope="session")
def small_batch(fixture_rows, tiny_cfg):
    """The first 4 rows only (cheaper backward passes; 9 boxes, descriptions repeated across images)."""
    samples = []
    for r in fixture_rows[:4]:
        s = sample_from_row(r, tiny_cfg)
        s["caption"] = r["source_caption"]
        samples.append(s)
    return make_batch(samples, tiny_cfg)


def seeded_model(cfg, seed=0):
    from grain.model import build_model

    torch.manual_seed(seed)
    return build_model(cfg)
