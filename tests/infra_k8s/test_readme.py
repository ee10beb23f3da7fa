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
    # the sizing table holds measured figures for each quantity, or says plainly that one is not measured
    for symbol in ("t_d", "t_g", "t_p"):
        row = next((line for line in text.splitlines() if f"| {symbol} |" in line), None)
        assert row is not None, f"sizing table has no row for {symbol}"
        assert "not measured" in row or any(ch.isdigit() for ch in row.split(f"| {symbol} |")[1]), row
    for secret in ("grain-s3", "grain-hf", "grain-prefect"):
        assert f"kubectl -n grain create secret generic {secret}" in text
