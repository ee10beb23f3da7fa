"""Plumbing the stages share, and no model code: the annotated-shard ``schema``, ``storage`` (local
paths and object-store URIs, the commit protocol), ``webdataset`` (the one tar reader), ``runconfig``
(run files + overrides → typed configs), ``safety`` (the test-hook policy) and ``parse`` (an MLLM's
free-text answer → caption and descriptions, shared by the annotation describer and ``grain
describe-classes``).

May import pyarrow, fsspec, pydantic and yaml; never the model modules of ``grain`` (contract
``grain-common-no-model``) and never Ray, Prefect or vLLM.
"""
