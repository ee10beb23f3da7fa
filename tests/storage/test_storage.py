"""grain.common.storage on a local disk and on a real S3-compatible HTTP server (moto, see s3_server.py)."""

from __future__ import annotations

import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from grain.common import storage

# Every protocol-level test runs twice: local directory and an S3 bucket over HTTP.
@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "store")
    return request.getfixturevalue("s3_bucket") + "/run"


def test_round_trip_bytes(root):
    uri = storage.join(root, "a", "blob.bin")
    payload = os.urandom(3000) + b"\x00end"
    storage.atomic_write_bytes(uri, payload)
    assert storage.read_bytes(uri) == payload
    assert storage.exists(uri)
    assert storage.is_committed(uri)
    marker = json.loads(storage.read_bytes(uri + storage.MARKER_SUFFIX))
    assert marker["kind"] == "file" and marker["size"] == len(payload)
    # overwrite: the new content wins
    storage.atomic_write_bytes(uri, b"second")
    assert storage.read_bytes(uri) == b"second"


def test_uncommitted_entry_is_invisible(root):
    storage.atomic_write_bytes(storage.join(root, "shard-0.parquet"), b"done-0")
    storage.atomic_write_bytes(storage.join(root, "shard-1.parquet"), b"half-written", commit=False)
    storage.atomic_write_bytes(storage.join(root, "shard-2.parquet"), b"done-2")
    committed = storage.list_committed(root)
    assert committed == [storage.join(root, "shard-0.parquet"), storage.join(root, "shard-2.parquet")]
    assert not any(c.endswith(storage.MARKER_SUFFIX) for c in committed)
    assert storage.list_shards(root)[1] == [storage.join(root, "shard-1.parquet")]
    assert not storage.is_committed(storage.join(root, "shard-1.parquet"))
    # the writer finishes later: commit makes it visible
    storage.commit(storage.join(root, "shard-1.parquet"))
    assert len(storage.list_committed(root, suffix=".parquet")) == 3
    # replacing: uncommit hides it again until the next commit
    storage.uncommit(storage.join(root, "shard-2.parquet"))
    assert storage.join(root, "shard-2.parquet") not in storage.list_committed(root)


def test_list_shards_commit_rule_folders_and_files(root):
    """The one shard listing: all shards of a folder without markers; committed ones once any marker exists."""
    storage.atomic_write_bytes(storage.join(root, "b.parquet"), b"b", commit=False)
    storage.atomic_write_bytes(storage.join(root, "a.parquet"), b"a", commit=False)
    storage.atomic_write_bytes(storage.join(root, "notes.txt"), b"n", commit=False)
    storage.atomic_write_bytes(storage.join(root, "sub", "c.parquet"), b"c", commit=False)
    # No marker anywhere (e.g. fixture shards): every shard of the level counts.
    assert storage.list_shards(root) == ([storage.join(root, "a.parquet"), storage.join(root, "b.parquet")], [])
    storage.commit(storage.join(root, "b.parquet"))
    assert storage.list_shards(root) == ([storage.join(root, "b.parquet")], [storage.join(root, "a.parquet")])
    deep, pending = storage.list_shards(root, recursive=True)
    assert deep == [storage.join(root, "b.parquet")]
    assert pending == [storage.join(root, "a.parquet"), storage.join(root, "sub", "c.parquet")]
    assert storage.list_shards(storage.join(root, "a.parquet")) == ([storage.join(root, "a.parquet")], [])
    with pytest.raises(FileNotFoundError, match="nowhere"):
        storage.list_shards(storage.join(root, "nowhere"))


def test_marker_without_data_is_not_committed(root):
    """A marker whose data object was deleted (e.g. by a lifecycle rule) does not count."""
    uri = storage.join(root, "gone.bin")
    storage.atomic_write_bytes(uri, b"x")
    fs, path = storage.open_fs(uri)
    fs.rm_file(path)
    assert not storage.is_committed(uri)
    assert storage.list_committed(root) == []


def test_failed_write_publishes_nothing(root):
    uri = storage.join(root, "partial.bin")
    with pytest.raises(RuntimeError, match="boom"):
        with storage.atomic_open(uri) as f:
            f.write(b"some bytes")
            raise RuntimeError("boom")
    assert not storage.exists(uri)
    assert not storage.is_committed(uri)
    assert storage.list_committed(root) == []


def test_commit_directory_records_files(root, tmp_path):
    src = tmp_path / "ckpt"
    (src / "sub").mkdir(parents=True)
    (src / "model.safetensors").write_bytes(b"w" * 100)
    (src / "sub" / "cfg.json").write_text("{}")
    dest = storage.join(root, "checkpoints", "step-10")
    storage.put_dir(str(src), dest)
    assert storage.is_committed(dest)
    marker = json.loads(storage.read_bytes(dest + storage.MARKER_SUFFIX))
    assert marker["kind"] == "directory"
    assert marker["files"] == {"model.safetensors": 100, "sub/cfg.json": 2}
    assert storage.list_committed(storage.join(root, "checkpoints")) == [dest]
    assert storage.read_bytes(storage.join(dest, "sub", "cfg.json")) == b"{}"


def test_commit_of_missing_entry_is_an_error(root):
    with pytest.raises(storage.StorageError, match="nothing to commit"):
        storage.commit(storage.join(root, "never-written"))


def test_list_missing_prefix_is_empty(root):
    assert storage.list_committed(storage.join(root, "no-such-prefix")) == []


def test_parquet_through_pyarrow_adapter(root):
    table = pa.table({"key": ["a", "b", "c"], "score": pa.array([0.5, 0.25, 1.0], pa.float32())})
    uri = storage.join(root, "tables", "t.parquet")
    # streamed write through atomic_open (the shard writer's path)
    with storage.atomic_open(uri) as f:
        pq.write_table(table, f)
    pafs, path = storage.pyarrow_fs(uri)
    assert pq.read_table(path, filesystem=pafs).equals(table)
    # and a direct pq.write_table through the adapter (Ray's path), committed afterwards
    uri2 = storage.join(root, "tables", "t2.parquet")
    pafs2, path2 = storage.pyarrow_fs(uri2)
    if storage.is_local(uri2):
        storage.makedirs(storage.join(root, "tables"))
    pq.write_table(table, path2, filesystem=pafs2)
    assert storage.list_committed(storage.join(root, "tables")) == [uri]
    storage.commit(uri2)
    assert storage.list_committed(storage.join(root, "tables")) == [uri, uri2]
    assert pq.read_table(path2, filesystem=pafs2).column("key").to_pylist() == ["a", "b", "c"]


def test_s3_objects_are_really_on_the_server(s3_bucket, s3_server):
    """Read back with a fresh client that knows nothing but the endpoint: no local caching fooled us."""
    import s3fs

    storage.atomic_write_bytes(s3_bucket + "/x/y.json", json.dumps({"v": 1}).encode())
    fresh = s3fs.S3FileSystem(endpoint_url=s3_server, skip_instance_cache=True)
    bucket = s3_bucket.removeprefix("s3://")
    assert json.loads(fresh.cat_file(f"{bucket}/x/y.json")) == {"v": 1}
    assert fresh.exists(f"{bucket}/x/y.json.done")


def test_test_server_keeps_answering_after_many_requests(s3_server):
    """The test server logs a line per request; 1,500 requests (~150 KiB of log, more than a pipe
    buffer holds) must all be answered. A server whose log went to an unread pipe hung here, and
    with it every later S3 test of the session."""
    import urllib.error
    import urllib.request

    for i in range(1500):
        try:  # any HTTP answer will do (the dashboard page); a hung server times out here
            with urllib.request.urlopen(f"{s3_server}/moto-api/", timeout=10) as r:
                assert r.status == 200, i
        except urllib.error.HTTPError as e:
            assert 400 <= e.code < 600, i


def test_join_and_protocols(tmp_path):
    assert storage.join("s3://b/p/", "x", "y.parquet") == "s3://b/p/x/y.parquet"
    assert storage.join(str(tmp_path), "x") == os.path.join(str(tmp_path), "x")
    assert storage.protocol_of("gs://b/k") == "gs"
    assert storage.is_local("rel/path") and storage.is_local("file:///tmp/x")
    with pytest.raises(storage.StorageError, match="relative"):
        storage.join("s3://b", "/abs")
    with pytest.raises(storage.StorageError, match="non-empty"):
        storage.open_fs("")


def test_endpoint_precedence(monkeypatch):
    for var in storage.ENDPOINT_ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    assert storage.endpoint_url() is None
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://generic:1")
    assert storage.endpoint_url() == "http://generic:1"
    monkeypatch.setenv("GRAIN_S3_ENDPOINT_URL", "http://grain:2")
    assert storage.endpoint_url() == "http://grain:2"


def test_missing_backend_names_the_uri_and_package():
    pytest.importorskip("fsspec")
    try:
        import gcsfs  # noqa: F401
    except ImportError:
        with pytest.raises(storage.StorageError, match=r"gs://bucket/x.*gcsfs"):
            storage.open_fs("gs://bucket/x")
    else:
        pytest.skip("gcsfs installed: nothing to check")


def test_storage_imports_no_heavy_stacks():
    import subprocess
    import sys

    # (torch is not checked: infra/compat's .pth imports it in every interpreter of this venv)
    code = "import sys, grain.common.storage; print([m for m in ('ray', 'prefect', 'vllm') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=os.getcwd(), check=True)
    assert out.stdout.strip() == "[]"


def test_failed_multipart_upload_is_aborted(s3_bucket):
    """A large object goes up as a multipart upload: parts already sent must not be published."""
    uri = s3_bucket + "/big.bin"
    options = {"default_block_size": 5 * 2**20}  # S3's minimum part size, so 11 MiB = several parts
    with pytest.raises(RuntimeError, match="crash mid-upload"):
        with storage.atomic_open(uri, storage_options=options) as f:
            f.write(os.urandom(11 * 2**20))
            assert f.mpu is not None  # the upload has really started on the server
            raise RuntimeError("crash mid-upload")
    assert not storage.exists(uri)
    fs, path = storage.open_fs(uri)
    bucket = path.split("/", 1)[0]
    assert fs.call_s3("list_multipart_uploads", Bucket=bucket).get("Uploads", []) == []
    storage.atomic_write_bytes(uri, b"ok", storage_options=options)
    assert storage.list_committed(s3_bucket) == [uri]
