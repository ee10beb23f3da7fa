"""The pretrain flow's last step: `grain export` of final.pt, linked with its model card in an artifact."""

import json
import os

import pytest


@pytest.fixture(scope="module")
def prefect_api():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def test_export_task_writes_the_folder_and_links_the_model_card(prefect_api, tmp_path):
    import torch
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.pretrain import export_model
    from grain.checkpoint import save_checkpoint
    from grain.config import ModelConfig
    from grain.model import build_model

    torch.manual_seed(0)
    cfg = ModelConfig.preset("tiny", kind="clip")
    ckpt = save_checkpoint(str(tmp_path / "run" / "final.pt"), build_model(cfg), cfg, extra={"step": 3})

    @flow
    def export_only(final: str):
        return export_model({"final_checkpoint": final})

    res = export_only(ckpt)
    assert res["export"] == str(tmp_path / "run" / "export")
    conf = json.load(open(os.path.join(res["export"], "open_clip_config.json")))
    assert conf["preprocess_cfg"]["resize_mode"] == "squash"
    assert res["load_line"] == f"model, preprocess, tokenizer = grain.hub.load({res['export']!r})"
    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["model-export"])))
    assert len(arts) == 1
    text = str(arts[0].data)
    assert res["load_line"] in text and "## Architecture" in text and res["model_card"] in text
    assert export_only("s3://bucket/run/final.pt") == {"export": None}  # object-store outputs are not exported
