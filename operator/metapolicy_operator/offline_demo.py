"""The offline scaling demo: the adaptation pipeline without Kubernetes.

Train at 8 nodes, grow to 10 and 16, shrink to 6 by removing named nodes, then run a rollback
drill (a sabotaged candidate that validation must catch). Prints the timeline; exits non-zero
if anything went wrong, including a drill that was not rolled back.
"""

from __future__ import annotations

import sys
import tempfile
import time

from metapolicy.adapt import AdaptationSettings, adapt, rollback_drill
from metapolicy.checkpoint import policy_to_checkpoint
from metapolicy.cluster import make_cluster, resize_cluster
from metapolicy.store import FilesystemStore
from metapolicy.timeline import progress, render
from metapolicy.training import TrainingSettings, train_initial


def run_offline_demo(fast: bool = False) -> int:
    train_steps, budget, distill_steps, episodes = (
        (4_096, 1_024, 512, 4) if fast else (300_000, 50_000, 8_192, 16)
    )
    start = time.perf_counter()
    store = FilesystemStore(tempfile.mkdtemp(prefix="metapolicy-demo-"))
    stamp = lambda: time.strftime("%M:%S", time.gmtime(time.perf_counter() - start))  # noqa: E731
    nodes = make_cluster(8)
    print(f"training node-set policy on {len(nodes)} nodes ({train_steps} steps)", flush=True)
    bar = progress("train")
    trained = train_initial(nodes, TrainingSettings(steps=train_steps), lambda f: bar("ppo", f))
    active = trained.policy
    record = trained.record().with_context(trigger="initial")
    store.set_active(store.save(policy_to_checkpoint(active, record=record)))
    rows = [record.to_json() | {"time": stamp(), "event": "train"}]
    steps = [
        ("scale up", lambda ns: resize_cluster(ns, 2, seed=1), None),
        ("scale up", lambda ns: resize_cluster(ns, 6, seed=2), None),
        ("scale down", lambda ns: resize_cluster(ns, -10), None),  # named middle nodes
        ("drill", lambda ns: resize_cluster(ns, 1, seed=3), rollback_drill),
    ]
    failed = False
    for event, change, perturb in steps:
        new_nodes = change(active.nodes)
        print(f"{event}: {active.size} -> {len(new_nodes)} nodes", flush=True)
        settings = AdaptationSettings(
            budget_steps=budget,
            distill_steps=distill_steps,
            episodes=episodes,
            min_retention=0.9,
            # 4 episodes in the fast run: every interval straddles, the numbers mean little
            on_inconclusive="promote" if fast else "pause",
        )
        result = adapt(active, new_nodes, settings, perturb=perturb, on_progress=progress(event))
        stages = [("zero-shot", result.zero_shot)]
        if result.final is not result.zero_shot:
            stages.append(("nodes", result.final))
        for trigger, stage in stages:
            record = stage.record.with_context(trigger=trigger)
            version = store.save(policy_to_checkpoint(stage.candidate, record=record))
            if stage.promoted:
                store.set_active(version)
            rows.append(record.to_json() | {"time": stamp(), "event": f"{trigger} {event}"})
        active = result.serving or active
        if perturb is not None and result.promoted:
            failed = True
            print("ERROR: the rollback drill's sabotaged candidate was promoted", file=sys.stderr)
    print()
    print(render(rows))
    print(f"\ncheckpoints: {store.root} (active version {store.active()})")
    return 1 if failed else 0
