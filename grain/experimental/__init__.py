"""Options that are not the paper's model, each off by default, kept apart so ``grain.decoder`` and
``grain.losses`` read as the paper (docs/method.md §6 lists each with its evidence).

| option (``ModelConfig`` field) | values (default first) | module |
|---|---|---|
| ``decoder_memory_pos`` | ``none``, ``sine`` (DETR: keys only), ``sine_kv`` (keys and values) | ``memory_pos`` |
| ``region_queries`` | ``learned``, ``two_stage`` (Deformable DETR's query selection, CenterNet's targets) | ``two_stage`` |
| ``proposal_head`` (two-stage only) | ``mlp`` (per token), ``conv`` (CenterNet's 3×3 → 1×1 heads) | ``two_stage`` |
| ``vision_pos_embed`` | ``learned``, ``sincos2d`` (MAE's fixed table; open_clip builds it) | ``grain.model`` |

``LossConfig.lambda_proposal`` weighs the two-stage proposal losses (``two_stage.proposal_losses``).
None of these adds a parameter to a checkpoint that does not use it.
"""

OPTIONS = {
    "decoder_memory_pos": ("none", "sine", "sine_kv"),
    "region_queries": ("learned", "two_stage"),
    "proposal_head": ("mlp", "conv"),
    "vision_pos_embed": ("learned", "sincos2d"),
}
