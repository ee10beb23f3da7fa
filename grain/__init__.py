"""GRAIN core library (arXiv 2412.04429): pure torch + scipy + open_clip towers; no Ray, Prefect or vLLM.

Modules: ``config`` (ModelConfig presets, LossConfig), ``model`` (build_model → GrainModel),
``decoder`` (RegionDecoder), ``tokenizer``, ``data`` (decode/preprocess/collate), ``box_ops``,
``matcher`` (HungarianMatcher), ``losses`` (GrainLoss), ``dist``, ``zeroshot``, ``checkpoint``,
``schema`` (annotated shards), ``storage``. See docs/ARCHITECTURE.md for the contracts.
"""
