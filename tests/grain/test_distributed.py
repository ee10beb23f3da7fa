"""Two gloo ranks on a split batch = one process on the whole batch (GrainLoss's distributed contract).

What "same" means (see grain/losses.py): summed over ranks, the gradients equal the single-process
gradient on the union; ``loss_ic`` is the global value on every rank; ``loss_l1``/``loss_giou``/
``loss_rd`` summed over ranks equal the single-process values. L_rd's candidate set is the *local*
batch, so the single-process reference restricts candidates to each rank's images (``rd_group``).
Scenario "split": both ranks hold boxes (and different batch sizes, 4 vs 2). Scenario "nobox":
rank 1 holds no boxes at all.

Fast test: a toy "model" (shared linear maps from fixed per-sample features to every output the
loss reads) keeps the spawned ranks light (no open_clip). Slow test: the tiny GrainModel end to end.
"""

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from grain.config import ModelConfig
from grain.data import make_batch
from grain.losses import GrainLoss

CFG = dict(vision_layers=1, text_layers=1)  # the tiny preset, thinner: only the arithmetic matters here
SPLITS = {"split": [[0, 1, 2, 3], [4, 5]], "nobox": [[0, 1, 2, 3], [6, 7]]}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(model, samples, idx, cfg, rank=0, world=1, rd_group=None):
    model.zero_grad(set_to_none=False)
    batch = make_batch([samples[i] for i in idx], cfg)
    losses = GrainLoss(rank=rank, world_size=world)(model(batch), batch, rd_group=rd_group)
    losses["loss"].backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    return {k: v.detach() for k, v in losses.items()}, grads


# ----------------------------------------------------------------------------------------- toy
TOY_COUNTS = [2, 1, 3, 0, 2, 0]  # target boxes per image
TOY_TEXT_IDS = [0, 1, 2, 0, 3, 4, 1, 5]  # repeated texts across images (masking is exercised)
TOY_SPLITS = {"split": [[0, 1, 2, 3], [4, 5]], "nobox": [[0, 1, 2, 4], [3, 5]]}


def _toy_data():
    g = torch.Generator().manual_seed(0)
    b, q, f, d, m = len(TOY_COUNTS), 5, 12, 8, sum(TOY_COUNTS)
    feats = {"img": torch.randn(b, f, generator=g), "txt": torch.randn(b, f, generator=g),
             "q": torch.randn(b, q, f, generator=g), "desc": torch.randn(m, f, generator=g)}
    params = {k: torch.randn(f, d, generator=g) * 0.3 for k in ("W_i", "W_t", "W_r", "W_d")}
    params["W_b"] = torch.randn(f, 4, generator=g) * 0.3
    params["s"] = torch.tensor(2.0)
    boxes = torch.cat([torch.rand(m, 2, generator=g) * 0.5 + 0.25, torch.rand(m, 2, generator=g) * 0.3 + 0.1], -1)
    owner = torch.repeat_interleave(torch.arange(b), torch.tensor(TOY_COUNTS))
    return feats, params, boxes, owner


def _toy_run(idx, rank=0, world=1, rd_group=None):
    feats, params, boxes, owner = _toy_data()
    params = {k: v.requires_grad_() for k, v in params.items()}
    idx_t = torch.tensor(idx)
    keep = torch.isin(owner, idx_t)
    local_owner = torch.searchsorted(idx_t.sort().values, owner[keep])  # idx are sorted in the splits
    outputs = {
        "image_embed": feats["img"][idx_t] @ params["W_i"],
        "text_embed": feats["txt"][idx_t] @ params["W_t"],
        "region_embed": feats["q"][idx_t] @ params["W_r"],
        "pred_boxes": (feats["q"][idx_t] @ params["W_b"]).sigmoid(),
        "desc_embed": feats["desc"][keep] @ params["W_d"],
        "logit_scale": params["s"].exp(),
    }
    batch = {"target_boxes": boxes[keep], "target_image": local_owner, "target_text_id": torch.tensor(TOY_TEXT_IDS)[keep]}
    losses = GrainLoss(rank=rank, world_size=world)(outputs, batch, rd_group=rd_group)
    losses["loss"].backward()
    return {k: v.detach() for k, v in losses.items()}, {k: v.grad.clone() for k, v in params.items()}


def _worker(rank, world, port, mode, data_path, out_dir):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        if mode == "toy":
            result = {name: _toy_run(split[rank], rank, world) for name, split in TOY_SPLITS.items()}
        else:
            from grain.model import build_model

            samples = torch.load(data_path, weights_only=True)
            cfg = ModelConfig.preset("tiny", **CFG)
            torch.manual_seed(0)
            model = build_model(cfg).eval()  # eval: no dropout, so both runs compute the same function
            result = {name: _run(model, samples, split[rank], cfg, rank, world) for name, split in SPLITS.items()}
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _spawn(mode, data_path, out_dir, world=2):
    mp.spawn(_worker, args=(world, _free_port(), mode, data_path, str(out_dir)), nprocs=world, join=True)
    return [torch.load(os.path.join(str(out_dir), f"rank{r}.pt"), weights_only=True) for r in range(world)]


def _compare(name, got, ref_losses, ref_grads, nobox_rank=None):
    for r in range(len(got)):
        assert torch.allclose(got[r][0]["loss_ic"], ref_losses["loss_ic"], atol=1e-5), name
    for key in ("loss_l1", "loss_giou", "loss_rd"):
        total = sum(g[0][key] for g in got)
        assert torch.allclose(total, ref_losses[key], atol=1e-5), (name, key, total, ref_losses[key])
    if nobox_rank is not None:
        assert got[nobox_rank][0]["loss_l1"].item() == 0.0 and got[nobox_rank][0]["loss_rd"].item() == 0.0
    for n, g in ref_grads.items():
        total = sum(x[1][n] for x in got)
        assert torch.allclose(total, g, rtol=1e-3, atol=1e-6), (name, n, (total - g).abs().max().item())


def test_two_gloo_ranks_equal_one_process_toy(tmp_path):
    ranks = _spawn("toy", "", tmp_path)
    for name, split in TOY_SPLITS.items():
        everything = sorted(split[0] + split[1])
        group = torch.tensor([0 if i in split[0] else 1 for i in everything])  # L_rd candidates per rank
        ref_losses, ref_grads = _toy_run(everything, rd_group=group)
        assert ref_losses["loss_rd"].item() > 0 and ref_losses["loss_l1"].item() > 0
        _compare(name, [r[name] for r in ranks], ref_losses, ref_grads, nobox_rank=1 if name == "nobox" else None)


@pytest.fixture(scope="module")
def samples(fixture_rows, tiny_cfg, tmp_path_factory):
    from grain.data import sample_from_row

    with_boxes = [r for r in fixture_rows if r["boxes"]]
    out = []
    for k, r in enumerate(with_boxes[:8]):
        s = sample_from_row(r, tiny_cfg)
        s["caption"] = r["source_caption"]
        if k >= 6:  # samples 6, 7: no boxes (the "nobox" rank)
            s["boxes_xyxy"], s["box_desc"] = [], []
        s.pop("key")
        out.append(s)
    path = tmp_path_factory.mktemp("dist") / "samples.pt"
    torch.save(out, path)
    return out, str(path)


@pytest.mark.slow
def test_two_gloo_ranks_equal_one_process_tiny_model(samples, tmp_path):
    data, path = samples
    ranks = _spawn("model", path, tmp_path)

    from grain.model import build_model

    cfg = ModelConfig.preset("tiny", **CFG)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    for name, split in SPLITS.items():
        group = torch.tensor([0] * len(split[0]) + [1] * len(split[1]))
        ref_losses, ref_grads = _run(model, data, split[0] + split[1], cfg, rd_group=group)
        _compare(name, [r[name] for r in ranks], ref_losses, ref_grads, nobox_rank=1 if name == "nobox" else None)
