"""Builders for tests, the demo and benchmarks: ``tiny_models`` (random-weight checkpoints of the real
architectures, built offline) and ``fixtures`` (valid annotated shards of synthetic images).

Nothing here is imported by the model modules or by ``grain.common`` (contracts ``grain-model`` and
``grain-common-no-model``).
"""
