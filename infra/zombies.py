"""Zombie flow runs: a run whose worker died must not stay "Running" forever.

Flow runs of the stack send a ``prefect.flow-run.heartbeat`` event every ``PREFECT_FLOWS_HEARTBEAT_FREQUENCY``
seconds (``GRAIN_HEARTBEAT_S``, 30 by default; the stack's worker sets it for every run). The automation
created here (Prefect's documented recipe, docs.prefect.io/v3/advanced/detect-zombie-flows) expects, after
each heartbeat, another heartbeat or a terminal state of the same run within ``zombie_after_s`` seconds;
when neither comes — the worker's machine, container or process group is gone — the server sets the run
to **Crashed** with ``ZOMBIE_MESSAGE``. Re-running the deployment then resumes (committed shards and
checkpoints are kept; see docs/reliability.md).

The automation lives in the Prefect server's database; ``ensure_zombie_automation`` keeps an identical one
and replaces one of other settings, so ``grain stack up`` can call it every time. On a cluster, run
``python -m infra.zombies --api-url …`` once against the cluster's Prefect server.
"""

from __future__ import annotations

import argparse
from datetime import timedelta

AUTOMATION_NAME = "grain: crash zombie flow runs"
ZOMBIE_MESSAGE = "No heartbeat from this flow run for {s} s: its worker or machine died (marked Crashed by the stack's automation)."


def zombie_automation(within_s: int):
    """The automation (not yet created): Proactive trigger on missing heartbeats → ChangeFlowRunState(CRASHED)."""
    from prefect.automations import Automation
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import EventTrigger, Posture
    from prefect.events.schemas.events import ResourceSpecification

    if within_s < 31:
        raise ValueError(f"zombie_after_s={within_s}: must exceed the heartbeat period (Prefect's minimum: 30 s)")
    return Automation(
        name=AUTOMATION_NAME,
        description="Marks a Running flow run Crashed when its heartbeats stop (worker or machine died).",
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"},
            expect={
                "prefect.flow-run.heartbeat",
                "prefect.flow-run.Completed",
                "prefect.flow-run.Failed",
                "prefect.flow-run.Cancelled",
                "prefect.flow-run.Crashed",
            },
            match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=within_s),
        ),
        actions=[ChangeFlowRunState(state=StateType.CRASHED, message=ZOMBIE_MESSAGE.format(s=within_s))],
    )


def ensure_zombie_automation(api_url: str, within_s: int) -> str:
    """Make sure the zombie automation of ``within_s`` exists on the server at ``api_url``; return its id.

    An identical one is kept as it is: replacing it would drop the expectations it holds for runs that
    already went silent (a worker that died just before `grain stack up` restarted it: its runs would then
    stay Running forever). One with other settings, or duplicates, are replaced."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    automation = zombie_automation(within_s)
    with temporary_settings({PREFECT_API_URL: api_url}):
        with get_client(sync_client=True) as client:
            old = client.read_automations_by_name(AUTOMATION_NAME)
            if len(old) == 1 and _same(old[0], automation):
                return str(old[0].id)
            for a in old:
                client.delete_automation(a.id)
            return str(automation.create().id)


def _same(found, wanted) -> bool:
    """Same trigger and actions (what the server evaluates), whatever ids, timestamps and set orders.

    The trigger's ``after``/``expect``/``for_each`` are sets: they dump as lists in an order that depends on
    the process's string-hash seed, so the lists are compared sorted (an unsorted comparison failed in one
    process in a few, replaced the automation and lost the expectations of a dead worker's runs)."""
    keys = {"trigger", "actions", "enabled"}
    return _canonical(found.model_dump(mode="json", include=keys)) == _canonical(wanted.model_dump(mode="json", include=keys))


def _canonical(obj):
    """``obj`` (a JSON dump) with every list sorted by its items' JSON text; ids of triggers dropped."""
    import json

    if isinstance(obj, dict):
        return {k: _canonical(v) for k, v in obj.items() if k != "id"}
    if isinstance(obj, list):
        return sorted((_canonical(v) for v in obj), key=lambda v: json.dumps(v, sort_keys=True))
    return obj


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m infra.zombies", description=__doc__.split("\n\n")[0])
    ap.add_argument("--api-url", required=True, help="the Prefect API, e.g. http://127.0.0.1:4200/api")
    ap.add_argument("--within", type=int, default=120, help="seconds without a heartbeat before Crashed (default 120)")
    args = ap.parse_args(argv)
    print(ensure_zombie_automation(args.api_url, args.within))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
