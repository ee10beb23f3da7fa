"""img2dataset in an environment of its own, called as a subprocess.

img2dataset 1.47 pins pyarrow<16, pandas<3, webdataset<0.3 (and more) that clash with this stack,
so it lives in ``$GRAIN_CACHE/img2dataset-venv`` (created on first use, or by ``infra/setup.sh``).

    python -m annotators.img2dataset_env ensure                    # create the environment
    python -m annotators.img2dataset_env download URL_LIST OUTPUT  # URL list (tsv/csv/parquet) → shards

``download_url_list`` first passes the list through annotators/url_guard.py (http(s) only, no loopback /
private / link-local / multicast / reserved addresses unless ``allow_private``): img2dataset only sees
the accepted URLs, and every redirect it follows is checked by the same rules (annotators/fetch_guard.py,
installed into the environment by ``install_fetch_guard``). It writes webdataset shards in img2dataset's layout (``00000.tar`` + the
``00000.parquet`` listing with every URL's ``status``/``error_message`` + ``00000_stats.json``), plus
``refused.parquet`` with one row per refused URL (status ``url_refused``, the reason, no image);
the annotation reader turns the listings' failed rows into ``download_error`` rows.
"""

from __future__ import annotations

import argparse
import gzip
import os
import shutil
import subprocess
import sys
import tempfile

from annotators import url_guard
from grain.common.cache import grain_cache
from grain.common.storage import atomic_open

IMG2DATASET_SPEC = "img2dataset==1.47.0"
URL_LIST_EXTS = (".tsv", ".csv", ".txt", ".tsv.gz", ".csv.gz", ".txt.gz")
REFUSED_SHARD = "refused.parquet"  # refused URLs of a download, beside img2dataset's shards


def env_dir() -> str:
    return os.path.join(grain_cache(), "img2dataset-venv")


def _base_python() -> str:
    """The interpreter the venv is made from: the one under the current venv, if any."""
    return getattr(sys, "_base_executable", None) or sys.executable


GUARD_PTH = "grain_fetch_guard.pth"  # run by every interpreter of the environment at start (site.py)


def install_fetch_guard(root: str) -> str:
    """Copy the URL guard and the redirect guard (annotators/fetch_guard.py) into the environment's
    site-packages and the ``.pth`` that installs the guard in every interpreter there (img2dataset's spawned
    download workers included); rewritten only when they differ. Returns the site-packages folder."""
    import glob

    here = os.path.dirname(os.path.abspath(__file__))
    found = sorted(glob.glob(os.path.join(root, "lib", "python3*", "site-packages")))
    if not found:
        raise FileNotFoundError(f"{root}: no lib/python3*/site-packages (not a virtual environment)")
    site = found[-1]
    files = {"grain_url_guard.py": open(os.path.join(here, "url_guard.py"), encoding="utf-8").read(),
             "grain_fetch_guard.py": open(os.path.join(here, "fetch_guard.py"), encoding="utf-8").read(),
             GUARD_PTH: "import grain_fetch_guard; grain_fetch_guard.install()\n"}
    for name, text in files.items():
        path = os.path.join(site, name)
        if not os.path.exists(path) or open(path, encoding="utf-8").read() != text:
            with atomic_open(path, commit=False) as fh:  # a venv never sees half a guard module
                fh.write(text.encode("utf-8"))
    return site


def ensure_env(quiet: bool = True) -> str:
    """Create the environment if needed, with the redirect guard installed (``install_fetch_guard``); return
    the path of its ``img2dataset`` executable."""
    root = env_dir()
    exe = os.path.join(root, "bin", "img2dataset")
    stamp = os.path.join(root, ".grain-spec")
    if os.path.exists(exe) and os.path.exists(stamp):
        with open(stamp) as fh:
            if fh.read().strip() == IMG2DATASET_SPEC:
                install_fetch_guard(root)
                return exe
    subprocess.run([_base_python(), "-m", "venv", root], check=True)
    pip = [os.path.join(root, "bin", "python"), "-m", "pip", "install", *(["-q"] if quiet else [])]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    subprocess.run([*pip, IMG2DATASET_SPEC], check=True)
    install_fetch_guard(root)
    with open(stamp, "w") as fh:
        fh.write(IMG2DATASET_SPEC + "\n")
    return exe


def input_format(url_list: str) -> str:
    """img2dataset's ``--input_format`` for a URL list file, from its extension."""
    for ext, fmt in ((".tsv", "tsv"), (".csv", "csv"), (".parquet", "parquet"), (".txt", "txt")):
        if url_list.endswith(ext) or url_list.endswith(ext + ".gz"):
            return fmt + (".gz" if url_list.endswith(".gz") and fmt != "parquet" else "")
    raise ValueError(f"URL list {url_list!r}: expected a .tsv, .csv, .parquet or .txt file (CC12M ships a TSV)")


def is_url_list(path: str) -> bool:
    """A single local file of URLs + captions (not img2dataset shards): tsv/csv/txt, or Parquet without images."""
    if not os.path.isfile(path):
        return False
    if path.endswith(URL_LIST_EXTS):
        return True
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq

        names = set(pq.read_schema(path).names)
        return "url" in names and not names & {"jpg", "png", "webp", "image"}
    return False


def read_url_list(url_list: str, url_col: str = "url", caption_col: str = "caption"):
    """The URL list as a pyarrow Table of strings: ``url_col`` and (when present) ``caption_col``."""
    import pyarrow as pa
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    fmt = input_format(url_list)
    if fmt.startswith("txt"):  # one URL per line, no header (img2dataset's txt format)
        opener = gzip.open if fmt.endswith(".gz") else open
        with opener(url_list, "rt", encoding="utf-8", errors="replace") as fh:
            table = pa.table({url_col: [line.strip() for line in fh if line.strip()]})
    elif fmt == "parquet":
        table = pq.read_table(url_list)
    else:
        delim = "\t" if fmt.startswith("tsv") else ","
        table = pcsv.read_csv(url_list, parse_options=pcsv.ParseOptions(delimiter=delim),
                              convert_options=pcsv.ConvertOptions(column_types={url_col: pa.string(),
                                                                                caption_col: pa.string()}))
    if url_col not in table.column_names:
        raise ValueError(f"URL list {url_list!r}: no column {url_col!r} (columns: {table.column_names})")
    cols = [c for c in (url_col, caption_col) if c in table.column_names]
    return pa.table({c: table.column(c).cast(pa.string()) for c in cols})


def filter_url_list(url_list: str, url_col: str = "url", caption_col: str = "caption", allow_private: bool = False,
                    resolve: url_guard.Resolver = url_guard.system_resolve):
    """(accepted rows, refused rows) of a URL list, as pyarrow Tables; refused rows carry the reason in
    ``error_message`` and keep their position in the list in ``key`` (``refused-<row>``)."""
    import pyarrow as pa

    table = read_url_list(url_list, url_col, caption_col)
    urls = table.column(url_col).to_pylist()
    reasons = url_guard.check_urls(urls, allow_private=allow_private, resolve=resolve)
    keep = [r is None for r in reasons]
    accepted = table.filter(pa.array(keep, pa.bool_()))
    idx = [i for i, r in enumerate(reasons) if r is not None]
    caps = table.column(caption_col).to_pylist() if caption_col in table.column_names else [None] * len(urls)
    refused = pa.table({
        "key": pa.array([f"refused-{i:09d}" for i in idx], pa.string()),
        "url": pa.array([urls[i] for i in idx], pa.string()),
        "caption": pa.array([caps[i] for i in idx], pa.string()),
        "status": pa.array([url_guard.REFUSED_STATUS] * len(idx), pa.string()),
        "error_message": pa.array([f"refused before download: {reasons[i]}" for i in idx], pa.string()),
        "jpg": pa.array([None] * len(idx), pa.binary()),
    })
    return accepted, refused


def download_url_list(url_list: str, output: str, url_col: str = "url", caption_col: str = "caption",
                      shard_size: int = 10_000, processes: int = 1, threads: int = 8, timeout: int = 10,
                      retries: int = 0, log_path: str | None = None, allow_private: bool | None = None,
                      resolve: url_guard.Resolver = url_guard.system_resolve) -> list[str]:
    """Download a URL list with img2dataset into webdataset shards in ``output``; return the tar paths.

    The list is filtered first (annotators/url_guard.py; ``allow_private`` None = the environment's
    ``GRAIN_URL_ALLOW_PRIVATE=1``): refused URLs are never fetched and land in ``output/refused.parquet``
    as error rows. Images are stored as fetched (``resize_mode=no``): the annotation stage decodes
    them itself. Raises with the tail of img2dataset's output when it fails as a whole; per-URL
    failures are not errors here (they are recorded in each shard's listing).
    """
    if not os.path.isfile(url_list):
        raise FileNotFoundError(f"URL list {url_list!r} does not exist")
    if "://" in output:
        raise ValueError(f"URL list download folder {output!r}: must be a local folder (img2dataset writes locally)")
    if allow_private is None:
        allow_private = url_guard.allow_private_from_env()
    import pyarrow.parquet as pq

    accepted, refused = filter_url_list(url_list, url_col, caption_col, allow_private, resolve)
    os.makedirs(output, exist_ok=True)
    refused_path = os.path.join(output, REFUSED_SHARD)
    if refused.num_rows:
        with atomic_open(refused_path, commit=False) as fh:
            pq.write_table(refused, fh)
    elif os.path.exists(refused_path):
        os.remove(refused_path)  # a rerun of a list that no longer has refused rows
    if log_path:
        with open(log_path, "a") as fh:
            fh.write(f"URL guard: {accepted.num_rows} accepted, {refused.num_rows} refused (allow_private={allow_private})\n")
    if accepted.num_rows == 0:
        return []  # nothing may be fetched: img2dataset is not started
    exe = ensure_env()
    tmp = tempfile.mkdtemp(prefix="grain-urls-")
    try:
        accepted_list = os.path.join(tmp, "accepted.parquet")  # outside `output`: not a shard
        pq.write_table(accepted, accepted_list)
        cmd = [
            exe, "--url_list", accepted_list, "--output_folder", output, "--output_format", "webdataset",
            "--input_format", "parquet", "--url_col", url_col,
            *(["--caption_col", caption_col] if caption_col in accepted.column_names else []),
            "--resize_mode", "no", "--processes_count", str(processes), "--thread_count", str(threads),
            "--number_sample_per_shard", str(shard_size), "--timeout", str(timeout), "--retries", str(retries),
            "--save_additional_columns", "[]", "--enable_wandb", "False", "--distributor", "multiprocessing",
            # loopback/test servers send no robots headers; honouring them is the default and stays so
        ]
        env = dict(os.environ)
        env.pop("PYTHONPATH", None)  # keep this stack's packages out of img2dataset's interpreter
        env.pop(url_guard.ALLOW_PRIVATE_ENV, None)  # the redirect guard's policy is this call's, nothing else
        if allow_private:
            env[url_guard.ALLOW_PRIVATE_ENV] = "1"
        r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if log_path:
        with open(log_path, "a") as fh:
            fh.write(f"$ {' '.join(cmd)}\n{r.stdout}\n{r.stderr}\n")
    if r.returncode != 0:
        raise RuntimeError(f"img2dataset failed on {url_list} (rc={r.returncode}):\n{(r.stdout + r.stderr)[-3000:]}")
    tars = sorted(os.path.join(output, f) for f in os.listdir(output) if f.endswith(".tar"))
    if not tars:
        raise RuntimeError(f"img2dataset wrote no shards into {output}:\n{(r.stdout + r.stderr)[-3000:]}")
    return tars


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m annotators.img2dataset_env", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("ensure", help="create $GRAIN_CACHE/img2dataset-venv if missing")
    d = sub.add_parser("download", help="download a URL list into webdataset shards")
    d.add_argument("url_list")
    d.add_argument("output")
    d.add_argument("--url-col", default="url")
    d.add_argument("--caption-col", default="caption")
    d.add_argument("--allow-private-urls", action="store_true",
                   help="also fetch loopback/private-range URLs (a corpus on your own network)")
    args = p.parse_args(argv)
    if args.cmd == "ensure":
        print(ensure_env(quiet=False))
    else:
        for t in download_url_list(args.url_list, args.output, args.url_col, args.caption_col,
                                   allow_private=args.allow_private_urls or None):
            print(t)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
