"""GRAIN (arXiv 2412.04429): the model library and, in subpackages, what the stages share.

The modules directly under ``grain/`` are the model: torch, scipy, open_clip's towers, the stdlib, plus
PIL/numpy for decoding (``data``), safetensors for the exported folder and tqdm; no config engine,
storage, Arrow or Hugging Face code (import-linter contract ``grain-model``). ``config`` (ModelConfig presets, LossConfig),
``model`` (build_model → GrainModel), ``decoder`` (RegionDecoder), ``matcher`` (HungarianMatcher),
``losses`` (GrainLoss), ``dist``, ``tokenizer``, ``box_ops``, ``data`` (decode/preprocess/collate),
``zeroshot``, ``checkpoint``, ``openclip_format`` and ``hub`` (the exported folder).

``grain.common``: plumbing shared by the stages, with no model code (shard schema, storage, webdataset
tars, the run-config engine, the test-hook policy). ``grain.testing``: builders for tests and the demo
(tiny random-weight checkpoints, fixture shards). See docs/ARCHITECTURE.md for the layout and contracts.
"""
