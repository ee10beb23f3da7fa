"""Per-step metrics on rank 0: ``metrics.jsonl`` (the Prefect flow reads it), TensorBoard, and the
loss-curve PNG drawn at the end. A resumed run appends; readers keep the last record of each step."""

from __future__ import annotations

import json
import os

LOSS_KEYS = ("loss", "loss_ic", "loss_l1", "loss_giou", "loss_rd")


class MetricsLogger:
    """Append-only JSON lines + TensorBoard scalars under ``log_dir`` (a local directory)."""

    def __init__(self, log_dir: str, tensorboard: bool = True):
        os.makedirs(log_dir, exist_ok=True)
        self.path = os.path.join(log_dir, "metrics.jsonl")
        self._f = open(self.path, "a", buffering=1)  # line-buffered: readable while training
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(os.path.join(log_dir, "tensorboard"))
            except ImportError:  # tensorboard not installed: jsonl still has everything
                self._tb = None

    def log(self, record: dict) -> None:
        self._f.write(json.dumps(record, sort_keys=True) + "\n")
        if self._tb is not None:
            step = int(record["step"])
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                    group = "loss" if k.startswith("loss") else "train"
                    self._tb.add_scalar(f"{group}/{k}", v, step)

    def flush(self) -> None:
        self._f.flush()
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        self._f.close()
        if self._tb is not None:
            self._tb.flush()
            self._tb.close()


def read_metrics(path: str) -> list[dict]:
    """Records of ``metrics.jsonl`` by step (the last record wins when a resumed run repeated a step)."""
    by_step: dict[int, dict] = {}
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                rec = json.loads(line)
                by_step[int(rec["step"])] = rec
    return [by_step[s] for s in sorted(by_step)]


def plot_loss_curves(metrics_path: str, png_path: str, title: str = "training losses") -> str | None:
    """Draw each loss term against the step into ``png_path`` (matplotlib Agg). None if no records."""
    records = read_metrics(metrics_path)
    if not records:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax_lr) = plt.subplots(2, 1, figsize=(8, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    steps = [r["step"] for r in records]
    for k in LOSS_KEYS:
        ys = [r.get(k) for r in records]
        if any(y is not None for y in ys):
            ax.plot(steps, [float("nan") if y is None else y for y in ys], label=k)
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    ax_lr.plot(steps, [r.get("lr", float("nan")) for r in records], color="black")
    ax_lr.set_ylabel("lr")
    ax_lr.set_xlabel("step")
    ax_lr.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return png_path
