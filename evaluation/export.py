"""`grain export CHECKPOINT --output DIR`: a checkpoint → one folder other tools read as it is.

    DIR/open_clip_config.json          model_cfg + preprocess_cfg (open_clip ``local-dir:`` / ``hf-hub:``)
    DIR/open_clip_model.safetensors    towers + logit_scale, open_clip ``CLIP`` layout
    DIR/grain_decoder.safetensors      GRAIN only: the region decoder
    DIR/run_config.json                the training run's config (train + loss) and counters
    DIR/eval_results.json              with ``--eval``: the run's results.json
    DIR/README.md                      the model card

Flat files only, so ``huggingface_hub.upload_folder(folder_path=DIR, repo_id=...)`` publishes it as it
is and ``open_clip.create_model_and_transforms("hf-hub:ORG/NAME")`` reads it back. The layout and the
key mapping are grain/openclip_format.py's; a config it cannot express is refused, naming the key.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

LICENCES = ("Images of the demo corpus and the local evaluation sets carry their sources' licences "
            "(Tux Paint stamps GPL-2.0-or-later, Openclipart CC0, Noto Emoji Apache-2.0, Twemoji CC-BY-4.0, "
            "OpenMoji CC-BY-SA-4.0, flag-icons MIT); a model trained on other data carries that data's terms.")


def export_checkpoint(checkpoint: str, output: str, eval_results: str | None = None) -> dict:
    """Write the export folder of ``checkpoint`` (a ``final.pt``) into ``output``; return ``{name: path}``."""
    from grain.checkpoint import load_checkpoint, unwrapped_state_dict
    from grain.openclip_format import model_cfg, write_weights

    model, cfg, extra = load_checkpoint(checkpoint)
    model_cfg(cfg)  # refuse before writing anything
    run = None
    if eval_results:
        with open(eval_results, encoding="utf-8") as f:
            run = json.load(f)
    os.makedirs(output, exist_ok=True)
    paths = {os.path.basename(p): p for p in write_weights(output, unwrapped_state_dict(model), cfg)}
    run_config = {"model_config": cfg.to_dict(), "train_config": extra.get("train_config"),
                  "loss_config": extra.get("loss_config"),
                  "counters": {k: extra.get(k) for k in ("step", "epoch", "samples_seen")}}
    paths["run_config.json"] = _write_json(os.path.join(output, "run_config.json"), run_config)
    if run is not None:
        paths["eval_results.json"] = _write_json(os.path.join(output, "eval_results.json"), run)
    paths["README.md"] = os.path.join(output, "README.md")
    with open(paths["README.md"], "w", encoding="utf-8") as f:
        f.write(model_card(cfg, run_config, run, os.path.basename(os.path.normpath(output))))
    return paths


def _write_json(path: str, obj) -> str:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1, default=str)
    return path


def _data_lines(train: dict | None) -> list[str]:
    if not train:
        return ["Not recorded in the checkpoint (it was not written by `grain train`)."]
    data = train.get("data") or {}
    return [f"- shards: `{data.get('path') or train.get('data_path') or '?'}`",
            f"- steps {train.get('max_steps') or '?'} / epochs {train.get('epochs')}, batch {train.get('batch_size')} per worker "
            f"× {train.get('workers')} workers, precision {train.get('precision')}",
            f"- optimiser: {json.dumps(train.get('optim'))}"]


def model_card(cfg, run_config: dict, run: dict | None, name: str) -> str:
    """The folder's README.md: architecture, data and recipe, evaluation table, licences, use and limits."""
    grain = cfg.kind == "grain"
    arch = (f"GRAIN: ViT ({cfg.vision_layers} layers, width {cfg.vision_width}, patch {cfg.patch_size}, "
            f"{cfg.image_size} px, QK-norm {cfg.vision_qk_norm}) + CLIP text transformer ({cfg.text_layers} layers, "
            f"width {cfg.text_width}) + region decoder ({cfg.decoder_layers} layers, {cfg.num_region_queries} region "
            f"queries and one image query); embeddings {cfg.embed_dim}."
            if grain else
            f"CLIP-only baseline: ViT ({cfg.vision_layers} layers, width {cfg.vision_width}, patch {cfg.patch_size}, "
            f"{cfg.image_size} px) + CLIP text transformer ({cfg.text_layers} layers, width {cfg.text_width}); "
            f"embeddings {cfg.embed_dim}.")
    load = ([f"    import grain.hub", f"    model, preprocess, tokenizer = grain.hub.load('{name}')",
             "    out = model.encode_regions(preprocess(image)[None])  # boxes [1, Q, 4] xyxy, region_embed [1, Q, D]",
             "", "Stock open_clip refuses this folder (`visual.proj` missing): GRAIN's image vector is its "
             "decoder's image query, which open_clip has no module for. The text tower, tokenizer and "
             "preprocessing are open_clip's."]
            if grain else
            [f"    model, _, preprocess = open_clip.create_model_and_transforms('local-dir:{name}')",
             f"    tokenizer = open_clip.get_tokenizer('local-dir:{name}')",
             "", "(`hf-hub:ORG/NAME` once uploaded; `grain.hub.load` gives the same model.)"])
    from evaluation.report import markdown_table

    table = markdown_table(run) if run else "No evaluation was attached (`grain export --eval results.json`)."
    lines = [f"# {name}", "", "## Architecture", "", arch, "",
             "Preprocessing: squash resize (aspect not kept), bicubic, ImageNet mean/std (`preprocess_cfg`).", "",
             "## Load", "", "    import open_clip", *load, "",
             "## Training data and recipe", "", *_data_lines(run_config.get("train_config")), "",
             f"Losses: {json.dumps(run_config.get('loss_config'))}", "",
             "## Evaluation", "", table, "", "## Licence of the data sources", "", LICENCES, "",
             "## Intended use and limits", "",
             "Research on region-grounded contrastive pretraining. A model trained by the tiny profile on the demo "
             "corpus has seen ~100 images: expect chance-level zero-shot accuracy; it checks the pipeline, it does "
             "not recognise things. Not for decisions about people.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="grain export", description="Write a checkpoint as an open_clip / Hugging Face "
                                "Hub folder: open_clip_config.json, safetensors weights, model card, run config.")
    p.add_argument("checkpoint", help="final.pt written by `grain train`")
    p.add_argument("--output", required=True, help="folder to write")
    p.add_argument("--eval", dest="eval_results", help="results.json of `grain eval` for the model card's table")
    args = p.parse_args(argv)
    try:
        paths = export_checkpoint(args.checkpoint, args.output, args.eval_results)
    except (ValueError, FileNotFoundError) as e:
        print(f"grain export: {e}", file=sys.stderr)
        return 2
    for k, v in paths.items():
        print(f"{k}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
