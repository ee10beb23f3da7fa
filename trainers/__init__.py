"""Pretraining stage on Ray Train: annotated shards → GRAIN (or the CLIP baseline) → ``final.pt``.

Entry points: ``trainers.run.run_training(cfg) -> dict`` (Python, the Prefect flow) and
``grain train`` / ``python -m trainers.cli`` (CLI). Modules: config (typed run config), index
(shard scan), plan (deterministic sample order), samples (row → sample, batch stream), optim,
state (checkpoint contents), session (Ray / in-process), loop (per-worker loop), metrics, run.
"""
