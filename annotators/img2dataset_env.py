"""img2dataset in an environment of its own, called as a subprocess.

img2dataset 1.47 pins pyarrow<16, pandas<3, webdataset<0.3 (and more) that clash with this stack,
so it lives in ``$GRAIN_CACHE/img2dataset-venv`` (created on first use, or by ``infra/setup.sh``).

    python -m annotators.img2dataset_env ensure                    # create the environment
    python -m annotators.img2dataset_env download URL_LIST OUTPUT  # URL list (tsv/csv/parquet) → shards

``download_url_list`` writes webdataset shards in img2dataset's layout (``00000.tar`` + the
``00000.parquet`` listing with every URL's ``status``/``error_message`` + ``00000_stats.json``);
the annotation reader turns the listing's failed rows into ``download_error`` rows.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

IMG2DATASET_SPEC = "img2dataset==1.47.0"


def env_dir() -> str:
    cache = os.environ.get("GRAIN_CACHE", os.path.expanduser("~/.cache/grain"))
    return os.path.join(cache, "img2dataset-venv")


def _base_python() -> str:
    """The interpreter the venv is made from: the one under the current venv, if any."""
    return getattr(sys, "_base_executable", None) or sys.executable


def ensure_env(quiet: bool = True) -> str:
    """Create the environment if needed; return the path of its ``img2dataset`` executable."""
    root = env_dir()
    exe = os.path.join(root, "bin", "img2dataset")
    stamp = os.path.join(root, ".grain-spec")
    if os.path.exists(exe) and os.path.exists(stamp):
        with open(stamp) as fh:
            if fh.read().strip() == IMG2DATASET_SPEC:
                return exe
    subprocess.run([_base_python(), "-m", "venv", root], check=True)
    pip = [os.path.join(root, "bin", "python"), "-m", "pip", "install", *(["-q"] if quiet else [])]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    subprocess.run([*pip, IMG2DATASET_SPEC], check=True)
    with open(stamp, "w") as fh:
        fh.write(IMG2DATASET_SPEC + "\n")
    return exe


def input_format(url_list: str) -> str:
    """img2dataset's ``--input_format`` for a URL list file, from its extension."""
    for ext, fmt in ((".tsv", "tsv"), (".csv", "csv"), (".parquet", "parquet"), (".txt", "txt")):
        if url_list.endswith(ext) or url_list.endswith(ext + ".gz"):
            return fmt + (".gz" if url_list.endswith(".gz") and fmt != "parquet" else "")
    raise ValueError(f"URL list {url_list!r}: expected a .tsv, .csv, .parquet or .txt file (CC12M ships a TSV)")


def download_url_list(url_list: str, output: str, url_col: str = "url", caption_col: str = "caption",
                      shard_size: int = 10_000, processes: int = 1, threads: int = 8, timeout: int = 10,
                      retries: int = 0, log_path: str | None = None) -> list[str]:
    """Download a URL list with img2dataset into webdataset shards in ``output``; return the tar paths.

    Images are stored as fetched (``resize_mode=no``): the annotation stage decodes them itself.
    Raises with the tail of img2dataset's output when it fails as a whole; per-URL failures are
    not errors here (they are recorded in each shard's listing).
    """
    if not os.path.isfile(url_list):
        raise FileNotFoundError(f"URL list {url_list!r} does not exist")
    exe = ensure_env()
    os.makedirs(output, exist_ok=True)
    cmd = [
        exe, "--url_list", url_list, "--output_folder", output, "--output_format", "webdataset",
        "--input_format", input_format(url_list), "--url_col", url_col, "--caption_col", caption_col,
        "--resize_mode", "no", "--processes_count", str(processes), "--thread_count", str(threads),
        "--number_sample_per_shard", str(shard_size), "--timeout", str(timeout), "--retries", str(retries),
        "--save_additional_columns", "[]", "--enable_wandb", "False", "--distributor", "multiprocessing",
        # loopback/test servers send no robots headers; honouring them is the default and stays so
    ]
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)  # keep this stack's packages out of img2dataset's interpreter
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
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
    args = p.parse_args(argv)
    if args.cmd == "ensure":
        print(ensure_env(quiet=False))
    else:
        for t in download_url_list(args.url_list, args.output, args.url_col, args.caption_col):
            print(t)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
