"""The whole server in-process against the embedded API server: informers, readiness, the
ConfigMap pointer (hot swap), pods followed through binding, shadow agreement through a real
binding. No operator runs: the server only reads, so it serves whatever the store says."""

import asyncio
import json
from pathlib import Path

import aiohttp
import kubernetes
import pytest

from e2e.embedded import embedded_cluster
from metapolicy.checkpoint import policy_to_checkpoint
from metapolicy.record import AdaptationRecord, Outcome
from metapolicy_operator.configmap_store import ConfigMapStore
from metapolicy_operator.serving.command import ServeOptions, ServingRuntime
from tests.serving.conftest import node_object, pod_object, untrained, wait_for

CRD = Path(__file__).resolve().parents[2] / "crds" / "metapolicy.yaml"
GROUP, VERSION, PLURAL = "metapolicy.dev", "v1alpha1", "metapolicies"
NODES = [
    node_object("a", latency_ms=15),
    node_object("b", latency_ms=2),
    node_object("c", latency_ms=15),
]

RECORD = AdaptationRecord(outcome=Outcome.PROMOTED, reason="test", trigger="initial")


def metapolicy(mode: str = "active") -> dict:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "MetaPolicy",
        "metadata": {"name": "p", "namespace": "default"},
        "spec": {"podSelector": {"matchLabels": {"app": "placed"}}, "serving": {"mode": mode}},
    }


def clean(obj: dict) -> dict:
    """What a client sends to create it: no server-set metadata."""
    meta = {k: v for k, v in obj["metadata"].items() if k not in ("uid", "resourceVersion")}
    return obj | {"metadata": meta}


@pytest.fixture
async def cluster():
    async with embedded_cluster([CRD], timeout=10) as cluster:
        api = kubernetes.config.new_client_from_config(config_file=str(cluster.kubeconfig))
        yield cluster, kubernetes.client.CoreV1Api(api), kubernetes.client.CustomObjectsApi(api)
        api.close()


async def test_the_server_follows_the_cluster_and_swaps_versions(cluster):
    embedded, core, custom = cluster

    def create() -> None:
        for node in NODES:
            core.create_node(clean(node))
        custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, metapolicy())

    await asyncio.to_thread(create)
    # Every answer below must be the policy's: a budget no stall of a busy 2-core machine
    # reaches (30 ms, the default, fell back in 2 of 12 runs, once a new version's first pass).
    options = ServeOptions(
        kubeconfig=str(embedded.kubeconfig), host="127.0.0.1", port=0, metrics_port=0,
        watch_seconds=5, budget_s=2.0,
    )  # fmt: skip
    runtime = ServingRuntime(options)
    await runtime.start()
    base = f"http://127.0.0.1:{runtime.port}"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:

        async def status(url: str) -> int:
            async with session.get(url) as response:
                return response.status

        async def prioritize(pod: dict) -> tuple[int, dict, dict]:
            body = {"Pod": pod, "Nodes": None, "NodeNames": ["a", "b", "c"]}
            async with session.post(f"{base}/scheduler/prioritize", data=json.dumps(body)) as r:
                data = await r.json()
                scores = {e["Host"]: e["Score"] for e in data} if r.status == 200 else data
                return r.status, scores, dict(r.headers)

        try:

            async def ready() -> bool:
                return await status(f"{base}/readyz") == 200

            await wait_for(ready, what="ready")
            metrics_base = f"http://127.0.0.1:{runtime.metrics_port}"
            for path in ("/readyz", "/healthz", "/metrics"):
                assert await status(metrics_base + path) == 200

            # No version yet: the default rule, and the reason.
            code, _, headers = await prioritize(pod_object("w0"))
            assert code == 200 and headers["X-Metapolicy-Outcome"] == "fallback"

            # The operator promotes a version: the server serves it.
            store = ConfigMapStore(core, "default", "p")
            first = await asyncio.to_thread(
                store.save, policy_to_checkpoint(untrained("node-set", NODES), record=RECORD)
            )
            await asyncio.to_thread(store.set_active, first)

            async def serves(version: int) -> bool:
                _, _, headers = await prioritize(pod_object("probe"))
                return headers.get("X-Metapolicy-Version") == str(version)

            await wait_for(lambda: serves(first), what="the first version serves")
            code, scores, _ = await prioritize(pod_object("w1"))
            assert scores["b"] == 10

            # Pods bound through the API are counted on their node.
            hog = pod_object("hog", cpu="3900m", node="b", phase="Running")
            await asyncio.to_thread(core.create_namespaced_pod, "default", clean(hog))
            await wait_for(lambda: runtime.cache.requested("b")[0] == 3900, what="hog counted")
            _, scores, _ = await prioritize(pod_object("w2"))
            assert scores["b"] < 10

            # A rolled-back candidate is stored and never served; a promotion is, while
            # requests keep coming and none fails.
            seen, stop = [], asyncio.Event()

            async def scheduler() -> None:
                i = 0
                while not stop.is_set():
                    i += 1
                    code, _, headers = await prioritize(pod_object(f"load-{i}"))
                    assert code == 200 and headers["X-Metapolicy-Outcome"] == "policy"
                    seen.append(int(headers["X-Metapolicy-Version"]))

            load = asyncio.create_task(scheduler())
            candidate = policy_to_checkpoint(untrained("node-set", NODES, seed=1), record=RECORD)
            rolled_back = await asyncio.to_thread(store.save, candidate)
            second = await asyncio.to_thread(
                store.save,
                policy_to_checkpoint(untrained("node-set", NODES, seed=2), record=RECORD),
            )
            await asyncio.to_thread(store.set_active, second)
            await wait_for(lambda: seen and seen[-1] == second, what="the promotion serves")
            stop.set()
            await load
            assert rolled_back not in seen and seen == sorted(seen)

            # Shadow mode through a spec change, agreement through a real binding.
            patch = {"spec": {"serving": {"mode": "shadow"}}}
            await asyncio.to_thread(
                custom.patch_namespaced_custom_object,
                GROUP, VERSION, "default", PLURAL, "p", patch,
            )  # fmt: skip
            await wait_for(
                lambda: runtime.registry.policies["default/p"].config.mode == "shadow",
                what="the spec change arrives",
            )
            pending = await asyncio.to_thread(
                core.create_namespaced_pod, "default", clean(pod_object("shadowed"))
            )
            pod = kubernetes.client.ApiClient().sanitize_for_serialization(pending)
            code, scores, headers = await prioritize(pod)
            assert headers["X-Metapolicy-Outcome"] == "shadow" and set(scores.values()) == {0}
            choice = max(runtime.shadow._choices.values())[1]
            binding = {"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "shadowed"},
                       "target": {"kind": "Node", "name": choice}}  # fmt: skip
            await asyncio.to_thread(
                core.create_namespaced_pod_binding, "shadowed", "default", binding,
                _preload_content=False,
            )  # fmt: skip
            sample = runtime.metrics.registry.get_sample_value
            await wait_for(
                lambda: sample("metapolicy_shadow_agreements_total", {"policy": "default/p"}),
                what="the binding is seen and agrees",
            )
            assert sample("metapolicy_shadow_bound_total", {"policy": "default/p"}) == 1
        finally:
            await runtime.stop()
