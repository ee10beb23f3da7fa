"""`grain export` on a tiny trained run of each arm: stock open_clip loads the CLIP arm strictly with the
same embeddings and tokens, grain.hub loads both, clip_benchmark's scorer agrees with `grain eval`, and
`grain eval` reads the folder back (slow: two 2-step training runs)."""

import json
import os

import numpy as np
import pytest

from grain.common.cache import grain_cache

pytestmark = pytest.mark.slow

REAL_NM = os.path.join(grain_cache(), "npm", "node_modules")
TEXTS = ["a photo of a flag.", "red colour", "a blue and white flag with a star"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from grain.testing.fixtures import FixtureSpec, write_fixture_shards
    from trainers.cli import main as train

    from evaluation import datasets as D

    if not os.path.exists(os.path.join(REAL_NM, "flag-icons", "package.json")):
        pytest.skip("flag-icons npm package not installed (run `grain data build` once)")
    root = tmp_path_factory.mktemp("export")
    shards = str(root / "shards")
    write_fixture_shards(shards, FixtureSpec(num_shards=1, rows_per_shard=12, max_objects=2, min_objects=1, seed=5))
    out = {"shards": shards, "flags": D.ensure_dataset("flags", root=str(root / "datasets"), limit=24, progress=False)}
    for kind in ("grain", "clip"):
        run = str(root / f"run-{kind}")
        assert train(["--data", shards, "--output", run, "--profile", "tiny", "--workers", "0", "--max-steps", "2",
                      "--set", "batch_size=6", "--set", "optim.warmup_steps=1", "--set", f"model.kind={kind}"]) == 0
        out[kind] = os.path.join(run, "final.pt")
    return root, out


def _export(root, ckpt: str, name: str, *extra) -> str:
    from infra.cli import main

    folder = str(root / name)
    assert main(["export", ckpt, "--output", folder, *extra]) == 0
    return folder


def _flag_images(flags: str) -> list[str]:
    return sorted(os.path.join(d, f) for d, _, fs in os.walk(flags) for f in fs if f.endswith(".png"))[:6]


def test_clip_arm_is_a_stock_open_clip_model(runs, tmp_path):
    import open_clip
    import torch
    from PIL import Image

    from grain.tokenizer import tokenize
    from infra.cli import main

    root, r = runs
    folder = _export(root, r["clip"], "clip-export")
    assert {"open_clip_config.json", "open_clip_model.safetensors", "README.md", "run_config.json"} <= set(os.listdir(folder))
    assert "grain_decoder.safetensors" not in os.listdir(folder)
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{folder}")  # strict=True inside
    model.eval()
    pp = model.visual.preprocess_cfg
    assert pp["resize_mode"] == "squash" and tuple(pp["mean"]) == (0.485, 0.456, 0.406) and pp["interpolation"] == "bicubic"
    tokenizer = open_clip.get_tokenizer(f"local-dir:{folder}")
    assert torch.equal(tokenizer(TEXTS), tokenize(TEXTS, 77))

    images = _flag_images(r["flags"])
    assert main(["embed", "--checkpoint", r["clip"], "--images", *images, "--output", str(tmp_path / "img.npy")]) == 0
    assert main(["embed", "--checkpoint", r["clip"], *sum((["--text", t] for t in TEXTS), []),
                 "--output", str(tmp_path / "txt.npy")]) == 0
    with torch.no_grad():
        x = torch.stack([preprocess(Image.open(p)) for p in images])
        img = model.encode_image(x, normalize=True).numpy()
        txt = model.encode_text(tokenizer(TEXTS), normalize=True).numpy()
    np.testing.assert_allclose(img, np.load(tmp_path / "img.npy"), atol=1e-5, rtol=0)
    np.testing.assert_allclose(txt, np.load(tmp_path / "txt.npy"), atol=1e-5, rtol=0)


def test_grain_arm_loads_through_grain_hub(runs, tmp_path):
    import open_clip
    import torch
    from PIL import Image

    import grain.hub
    from grain.checkpoint import load_checkpoint
    from grain.data import preprocess_image

    root, r = runs
    folder = _export(root, r["grain"], "grain-export")
    assert "grain_decoder.safetensors" in os.listdir(folder)
    with pytest.raises(RuntimeError, match="visual.proj"):  # stock open_clip has no module for the image query
        open_clip.create_model_and_transforms(f"local-dir:{folder}")
    model, preprocess, tokenizer = grain.hub.load(folder)
    ref, _, _ = load_checkpoint(r["grain"])
    images = [Image.open(p) for p in _flag_images(r["flags"])]
    with torch.no_grad():
        x = torch.stack([preprocess(im) for im in images])
        np.testing.assert_allclose(x.numpy(), torch.stack([preprocess_image(im, 64) for im in images]).numpy(), atol=1e-5)
        want = ref.encode_image(x)
        got = model.encode_image(x, normalize=True)
        torch.testing.assert_close(got, torch.nn.functional.normalize(want["image_embed"], dim=-1), atol=1e-5, rtol=0)
        reg = model.encode_regions(x)
        assert reg["boxes"].shape == (len(images), ref.cfg.num_region_queries, 4)
        from grain.box_ops import box_cxcywh_to_xyxy

        torch.testing.assert_close(reg["boxes"], box_cxcywh_to_xyxy(want["pred_boxes"]).clamp(0, 1), atol=1e-5, rtol=0)
        torch.testing.assert_close(reg["region_embed"], want["region_embed"], atol=1e-5, rtol=0)
        torch.testing.assert_close(model.encode_text(tokenizer(TEXTS)), ref.encode_text(tokenizer(TEXTS)), atol=1e-5, rtol=0)
        assert float(model.logit_scale.exp()) == pytest.approx(float(ref.scale()), rel=1e-6)


@pytest.mark.parametrize("kind", ["grain", "clip"])
def test_clip_benchmark_agrees_with_grain_eval_on_the_exported_folder(runs, kind):
    from infra.cli import main

    root, r = runs
    folder = _export(root, r[kind], f"{kind}-eval-export")
    sets = ["--dataset", r["flags"], "--dataset", r["shards"], "--set", "progress=false", "--batch-size", "8"]
    assert main(["eval", "--checkpoint", r[kind], "--output", str(root / f"{kind}-pt"), *sets]) == 0
    assert main(["eval", "--checkpoint", folder, "--output", str(root / f"{kind}-dir"), *sets]) == 0
    assert main(["eval", "--engine", "clip_benchmark", "--checkpoint", folder, "--output", str(root / f"{kind}-cb"), *sets]) == 0
    pt = {(x["dataset"], x["variant"]): x["metrics"] for x in json.load(open(root / f"{kind}-pt" / "results.json"))["results"]}
    d = {(x["dataset"], x["variant"]): x["metrics"] for x in json.load(open(root / f"{kind}-dir" / "results.json"))["results"]}
    assert d == pt  # the folder is the same model as final.pt
    cb = {}
    for f in os.listdir(root / f"{kind}-cb"):
        dump = json.load(open(root / f"{kind}-cb" / f))
        assert set(dump) >= {"dataset", "model", "pretrained", "task", "metrics"}
        cb[dump["dataset"]] = dump["metrics"]
    for key in ("acc1", "acc5"):
        assert abs(cb["flags"][key] - pt[("flags", "names")][key]) <= 0.005, key
    assert abs(cb["flags"]["mean_per_class_recall"] - pt[("flags", "names")]["mean_per_class_recall"]) <= 0.005
    for k in (1, 5):
        for way in ("image", "text"):
            key = f"{way}_retrieval_recall@{k}"
            assert abs(cb["shards"][key] - pt[("shards", "retrieval")][key]) <= 0.005, key
    print(f"{kind}: flags top-1 grain eval {100 * pt[('flags', 'names')]['acc1']:.1f}, clip_benchmark {100 * cb['flags']['acc1']:.1f}")


def test_model_card_and_run_config(runs):
    from infra.cli import main

    root, r = runs
    assert main(["eval", "--checkpoint", r["grain"], "--dataset", r["flags"], "--output", str(root / "card-eval"),
                 "--set", "progress=false", "--alpha", "1"]) == 0
    main_eval = root / "card-eval" / "results.json"
    folder = _export(root, r["grain"], "card-export", "--eval", str(main_eval))
    card = open(os.path.join(folder, "README.md")).read()
    for section in ("## Architecture", "## Training data and recipe", "## Evaluation", "## Licence of the data sources",
                    "## Intended use and limits", "squash resize", "grain.hub.load", "| flags | 24 | 24 | 4.2 / 20.8 |"):
        assert section in card, section
    rc = json.load(open(os.path.join(folder, "run_config.json")))
    assert rc["counters"]["step"] == 2 and rc["train_config"]["max_steps"] == 2 and rc["model_config"]["kind"] == "grain"


def test_export_refuses_a_config_it_cannot_express(tmp_path, capsys):
    import torch

    from grain.checkpoint import save_checkpoint
    from grain.config import ModelConfig
    from grain.model import build_model
    from infra.cli import main

    torch.manual_seed(0)
    cfg = ModelConfig.preset("tiny", kind="clip", vocab_size=1000)  # not open_clip's tokenizer
    ckpt = save_checkpoint(str(tmp_path / "v.pt"), build_model(cfg), cfg)
    assert main(["export", ckpt, "--output", str(tmp_path / "out")]) == 2
    assert "'vocab_size'" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "out")
