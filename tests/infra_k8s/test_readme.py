"""infra/README.md stays in step with the files it documents."""

from __future__ import annotations

import os

from tests.infra_k8s.conftest import K8S, REPO


def test_readme_covers_every_manifest_and_the_run_command():
    with open(os.path.join(REPO, "infra", "README.md")) as fh:
        text = fh.read()
    for name in os.listdir(K8S):
        assert f"k8s/{name}" in text, f"infra/README.md does not mention k8s/{name}"
    assert "prefect deployment run annotate-cc12m/annotate-cc12m" in text
    assert "TBD" in text  # the throughput table is a placeholder until the benchmarks fill it
    for secret in ("grain-s3", "grain-hf", "grain-prefect"):
        assert f"kubectl -n grain create secret generic {secret}" in text
