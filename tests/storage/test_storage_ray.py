"""Ray Data reads committed Parquet shards from S3 through grain.common.storage's pyarrow adapter."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from grain.common import storage
from tests.storage.s3_server import S3_ENV


@pytest.mark.slow  # a Ray session (~4 s) and a Ray Data job
def test_ray_data_reads_committed_shards_from_s3(ray_local, s3_bucket):
    import ray

    prefix = s3_bucket + "/annotated"
    for i in range(3):
        table = pa.table({"key": [f"{i}-{j}" for j in range(5)], "shard": [i] * 5})
        with storage.atomic_open(storage.join(prefix, f"{i:05d}.parquet"), commit=i != 1) as f:
            pq.write_table(table, f)  # shard 1 is left uncommitted (a crashed writer)
    uris = storage.list_committed(prefix, suffix=".parquet")
    assert [u.rsplit("/", 1)[1] for u in uris] == ["00000.parquet", "00002.parquet"]
    # The session's Ray workers may predate the S3 server's env (dummy creds): hand them to the
    # filesystem explicitly; on a cluster the pods get real ones from a Secret (infra/README.md).
    creds = {"key": S3_ENV["AWS_ACCESS_KEY_ID"], "secret": S3_ENV["AWS_SECRET_ACCESS_KEY"]}
    pafs, _ = storage.pyarrow_fs(prefix, storage_options=creds)
    paths = [storage.open_fs(u)[1] for u in uris]
    ds = ray.data.read_parquet(paths, filesystem=pafs)
    rows = ds.take_all()
    assert sorted({r["shard"] for r in rows}) == [0, 2]
    assert len(rows) == 10
