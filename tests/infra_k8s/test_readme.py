"""infra/README.md stays in step with the files it documents."""

from __future__ import annotations

import os
import re

from tests.infra_k8s.conftest import K8S, REPO


MEASURED = ("t_d", "t_g", "t_p")  # throughputs: always measured quantities, whatever else the row computes


def sizing_rows(text: str) -> list[list[str]]:
    """The cells (quantity, symbol, value, source) of each row of §8's sizing table."""
    section = text.split("## 8.", 1)[1].split("\n## ", 1)[0]
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in section.splitlines()
            if line.startswith("| ") and not line.startswith("| quantity |")]
    assert rows and all(len(r) == 4 for r in rows), "the sizing table is not a 4-column table"
    return rows


def sizing_row_problem(row: list[str]) -> str | None:
    """Why a sizing row is not honest about its evidence, or None. A measured figure (a t_* row, or a
    source that is neither computed nor an assumption) cites an existing ``benchmarks/results/`` file,
    or says "not reproducible here: <why>"; "not measured" with no reason is not accepted."""
    quantity, symbol, value, source = row
    if symbol not in MEASURED and source.startswith(("computed", "assumption")):
        return None
    results = re.findall(r"benchmarks/results/[\w.\-]+", value + source)
    missing = [r for r in results if not os.path.exists(os.path.join(REPO, r))]
    if missing:
        return f"{quantity}: cites {missing}, which do not exist"
    why = re.search(r"not reproducible here: ([^|;*]+)", value)
    if results and any(ch.isdigit() for ch in value):
        return None
    if why and len(why.group(1).split()) >= 4:
        return None
    return f"{quantity} ({symbol}): neither a figure with a benchmarks/results/ file nor 'not reproducible here: <why>'"


def test_sizing_row_check_refuses_unsupported_rows():
    ok = ["describer", "t_d", "**not reproducible here: it needs a GPU and none is reachable**", "computed"]
    assert sizing_row_problem(ok) is None
    assert sizing_row_problem(["describer", "t_d", "not measured", "computed"])
    assert sizing_row_problem(["grounder", "t_g", "≈ 160", "H200"])  # a figure and no evidence
    assert sizing_row_problem(["grounder", "t_g", "≈ 160 (benchmarks/results/nope.json)", "H200"])
    assert sizing_row_problem(["grounder", "t_g", "≈ 160, not reproducible here: GPU", "H200"])  # no reason given
    assert sizing_row_problem(["ceiling", "—", "≈ 885", "computed"]) is None


def test_readme_covers_every_manifest_and_the_run_command():
    with open(os.path.join(REPO, "infra", "README.md")) as fh:
        text = fh.read()
    for name in os.listdir(K8S):
        assert f"k8s/{name}" in text, f"infra/README.md does not mention k8s/{name}"
    assert "prefect deployment run annotate-cc12m/annotate-cc12m" in text
    rows = sizing_rows(text)
    assert {"t_d", "t_g", "t_p"} <= {r[1] for r in rows}, "sizing table lacks a row for t_d, t_g or t_p"
    for row in rows:
        assert sizing_row_problem(row) is None, sizing_row_problem(row)
    for secret in ("grain-s3", "grain-hf", "grain-prefect"):
        assert f"kubectl -n grain create secret generic {secret}" in text
