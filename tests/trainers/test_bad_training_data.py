"""`grain train` refuses training data it cannot use with one line naming the path or the file, exit status 2,
and no traceback, before any model is built: a missing path, an empty folder, a corrupt or truncated shard,
a Parquet file not in the annotation schema, shards without one ok row."""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from grain.testing.fixtures import FixtureSpec, write_fixture_shards


def _train(capsys, data, tmp_path) -> tuple[int, str]:
    from trainers.cli import main

    rc = main(["--data", str(data), "--output", str(tmp_path / "run"), "--profile", "tiny", "--workers", "0"])
    err = capsys.readouterr().err
    return rc, err


def _good(folder):
    write_fixture_shards(str(folder), FixtureSpec(num_shards=1, rows_per_shard=4, seed=0))
    return sorted(f for f in os.listdir(folder) if f.endswith(".parquet"))[0]


@pytest.mark.parametrize("case", ["missing", "empty", "corrupt", "truncated", "wrong_schema", "no_ok_rows"])
def test_unusable_training_data_is_one_line_naming_it(case, tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    named = str(data)
    if case == "missing":
        data = tmp_path / "nonexistent"
        named = str(data)
    elif case == "corrupt":
        _good(data)
        (data / "zz-corrupt.parquet").write_bytes(b"PAR1 this is not parquet at all")
        named = "zz-corrupt.parquet"
    elif case == "truncated":
        good = _good(data)
        blob = (data / good).read_bytes()
        (data / good).write_bytes(blob[: len(blob) // 2])
        named = good
    elif case == "wrong_schema":
        pq.write_table(pa.table({"url": ["http://x/1.jpg"], "caption": ["a cat"]}), data / "listing.parquet")
        named = "listing.parquet"
    elif case == "no_ok_rows":
        write_fixture_shards(str(data), FixtureSpec(num_shards=1, rows_per_shard=0, error_rows_per_shard=3, seed=0))
        named = "no ok row"
    rc, err = _train(capsys, data, tmp_path)
    assert rc == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith("grain train: ") and named in err, err
