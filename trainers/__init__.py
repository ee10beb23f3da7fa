"""Pretraining stage on Ray Train: annotated shards → GRAIN (or the CLIP baseline) → ``final.pt``.

Entry points: ``trainers.run.run_training(cfg) -> dict`` (Python, the Prefect flow) and
``grain train`` / ``python -m trainers.cli`` (CLI). Modules: config (typed run config), index
(shard scan), plan (deterministic sample order), samples (row → sample, batch stream), optim,
state (checkpoint contents), session (Ray / in-process), loop (the per-worker ``Trainer``: setup, step, log,
checkpoint), metrics, run (the driver: ``plan_run`` → ``RunPlan``, run.json, fit + export of final.pt, curves).
"""
