"""The scheduler driver's extender client speaks kube-scheduler's wire format (e2e/extender.py),
checked against a stand-in extender over real HTTP."""

from __future__ import annotations

import pytest

from e2e.extender import (
    ExtenderClient,
    ExtenderConfig,
    ExtenderError,
    parse_go_duration,
    shipped_extender,
)

POD = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "p", "namespace": "default", "uid": "u-1", "labels": {"app": "x"}},
    "spec": {"schedulerName": "metapolicy-scheduler", "containers": [{"name": "c"}]},
    "status": {"phase": "Pending"},
}
NODES = [{"metadata": {"name": n}, "status": {"allocatable": {"cpu": "4"}}} for n in "abc"]


def client(url: str, **changes) -> ExtenderClient:
    config = ExtenderConfig.from_dict(
        {"urlPrefix": f"{url}/scheduler", "filterVerb": "filter", "prioritizeVerb": "prioritize",
         "weight": 20, "httpTimeout": "2s", "nodeCacheCapable": True, "ignorable": True}
    )  # fmt: skip
    return ExtenderClient(config if not changes else ExtenderConfig(**vars(config) | changes))


def test_the_shipped_configuration():
    config = shipped_extender()
    assert config.url_prefix == "http://metapolicy-serve.metapolicy-system.svc:8090/scheduler"
    assert (config.weight, config.http_timeout_s) == (20, 0.1)
    assert config.node_cache_capable and config.ignorable
    assert config.score_factor() == 200  # Score x weight x MaxNodeScore / MaxExtenderPriority
    local = config.at("http://127.0.0.1:9999")
    assert local.url_prefix == "http://127.0.0.1:9999/scheduler" and local.weight == 20


@pytest.mark.parametrize(
    ("text", "seconds"), [("100ms", 0.1), ("1.5s", 1.5), ("1m30s", 90.0), ("250us", 0.00025)]
)
def test_go_durations(text, seconds):
    assert parse_go_duration(text) == pytest.approx(seconds)


def test_go_durations_reject_garbage():
    for text in ("", "100", "1 s", "5x"):
        with pytest.raises(ValueError):
            parse_go_duration(text)


def test_node_cache_capable_requests_carry_names_and_a_null_node_list(stand_in):
    extender = client(stand_in.url)
    assert extender.filter(POD, NODES).nodes == ["a", "b", "c"]
    assert extender.prioritize(POD, NODES) == {"a": 0, "b": 0, "c": 10}
    for verb, body in stand_in.requests:
        # ExtenderArgs has no json tags: the keys are the Go field names, and the nil
        # *v1.NodeList is marshalled as null.
        assert set(body) == {"Pod", "Nodes", "NodeNames"}, verb
        assert body["Nodes"] is None and body["NodeNames"] == ["a", "b", "c"]
        assert body["Pod"] == POD  # the pod as the API returned it, untouched
    assert stand_in.verbs() == ["filter", "prioritize"]


def test_without_node_cache_the_full_nodes_are_sent(stand_in):
    extender = client(stand_in.url, node_cache_capable=False)
    extender.prioritize(POD, NODES)
    (_, body) = stand_in.requests[-1]
    assert body["NodeNames"] is None and body["Nodes"]["items"] == NODES


def test_filter_results_as_kube_scheduler_reads_them(stand_in):
    stand_in.keep = lambda name: name != "b"
    assert client(stand_in.url).filter(POD, NODES).nodes == ["a", "c"]
    stand_in.mode = "filter-error"
    with pytest.raises(ExtenderError, match="stand-in: broken"):
        client(stand_in.url).filter(POD, NODES)


def test_a_filter_result_naming_a_node_it_was_not_sent_is_an_error(stand_in):
    original = stand_in.answer
    stand_in.answer = lambda verb, body: {"NodeNames": ["zz"], "Error": ""}
    try:
        with pytest.raises(ExtenderError, match="not sent"):
            client(stand_in.url).filter(POD, NODES)
    finally:
        stand_in.answer = original


def test_go_decodes_keys_case_insensitively_and_scores_must_be_integers(stand_in):
    original = stand_in.answer
    try:
        stand_in.answer = lambda verb, body: [{"host": "a", "score": 3}]
        assert client(stand_in.url).prioritize(POD, NODES) == {"a": 3}
        stand_in.answer = lambda verb, body: [{"Host": "a", "Score": 2.5}]
        with pytest.raises(ExtenderError, match="HostPriority"):
            client(stand_in.url).prioritize(POD, NODES)
        stand_in.answer = lambda verb, body: {"Host": "a"}
        with pytest.raises(ExtenderError, match="HostPriorityList"):
            client(stand_in.url).prioritize(POD, NODES)
    finally:
        stand_in.answer = original


def test_http_errors_timeouts_and_a_server_that_is_gone_are_errors(stand_in):
    stand_in.mode = "error"
    with pytest.raises(ExtenderError, match="HTTP 500"):
        client(stand_in.url).prioritize(POD, NODES)
    stand_in.mode = "hang"
    slow = client(stand_in.url, http_timeout_s=0.2)
    with pytest.raises(ExtenderError):
        slow.prioritize(POD, NODES)
    assert slow.seconds < 5  # it gave up at its timeout, not when the server answered
    stand_in.release.set()
    url = stand_in.url
    stand_in.stop()
    with pytest.raises(ExtenderError):
        client(url).filter(POD, NODES)
