"""Plumbing the stages share, and no model code:

- ``schema``: the annotated-shard schema, its validation and row builders (``descriptions_and_index``);
- ``storage``: local paths and object-store URIs, the commit protocol, ``atomic_open`` (the one
  temp file + rename of a file);
- ``webdataset``: the one tar reader;
- ``runconfig``: run files + overrides → typed configs, and the one config table (``format_rows``);
- ``safety``: the test-hook policy;
- ``parse``: an MLLM's free-text answer → caption and descriptions, shared by the annotation describer
  and ``grain describe-classes``;
- ``cache``: the one ``$GRAIN_CACHE`` resolution (``grain_cache``);
- ``vllm_args``: the arguments every vLLM engine is built with (``engine_kwargs``: the CPU fixes),
  without importing vLLM;
- ``ray_session``: the private local Ray on loopback that ``grain annotate`` and ``grain train`` start;
  the one module of ``grain`` that imports Ray, inside its functions (contract ``grain-pure`` names it).

May import pyarrow, fsspec, pydantic and yaml; never the model modules of ``grain``, ``grain.testing``
or torch (contract ``grain-common-no-model``), never Prefect or vLLM, and Ray only inside
``ray_session``'s functions.
"""
