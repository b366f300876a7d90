"""kube-scheduler's HTTP extender client (pkg/scheduler/extender.go), for the scheduler driver.

The configuration is read from the KubeSchedulerConfiguration shipped in
`manifests/scheduler/` (the `extenders[0]` entry), so the driver calls the server with the
weight, timeout and flags a real deployment uses; only the URL is pointed at the local server.

Wire format (k8s.io/kube-scheduler/extender/v1, Go structs without JSON tags): the request is
`ExtenderArgs{"Pod": <v1.Pod>, "Nodes": null, "NodeNames": [...]}` with `nodeCacheCapable`
(`"Nodes": {"items": [...]}, "NodeNames": null` without); `prioritize` answers a
`HostPriorityList` `[{"Host", "Score"}]`, `filter` an `ExtenderFilterResult`. Go decodes
object keys case-insensitively and a Score must be an integer; this client does the same.
Anything but HTTP 200 with a decodable body is an error, as is a filter result naming a node
it was not sent, or one with `Error` set.
"""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
SCHEDULER_CONFIG = ROOT / "manifests" / "scheduler" / "configmap.yaml"
CONFIG_KEY = "config.yaml"
DEFAULT_TIMEOUT_S = 5.0  # DefaultExtenderTimeout in pkg/scheduler/extender.go
MAX_EXTENDER_PRIORITY = 10  # extenderv1.MaxExtenderPriority
MAX_NODE_SCORE = 100  # framework.MaxNodeScore


class ExtenderError(Exception):
    """The call failed (unreachable, timeout, non-200, undecodable, Error set)."""


@dataclass(frozen=True)
class ExtenderConfig:
    """One `extenders[]` entry of a KubeSchedulerConfiguration (kubescheduler.config.k8s.io/v1)."""

    url_prefix: str
    filter_verb: str = ""
    prioritize_verb: str = ""
    weight: int = 1
    http_timeout_s: float = DEFAULT_TIMEOUT_S
    node_cache_capable: bool = False
    ignorable: bool = False

    @classmethod
    def from_dict(cls, entry: Mapping[str, Any]) -> ExtenderConfig:
        timeout = entry.get("httpTimeout")
        return cls(
            url_prefix=str(entry["urlPrefix"]).rstrip("/"),
            filter_verb=entry.get("filterVerb", ""),
            prioritize_verb=entry.get("prioritizeVerb", ""),
            weight=int(entry.get("weight", 1)),
            http_timeout_s=parse_go_duration(timeout) if timeout else DEFAULT_TIMEOUT_S,
            node_cache_capable=bool(entry.get("nodeCacheCapable", False)),
            ignorable=bool(entry.get("ignorable", False)),
        )

    def at(self, base_url: str) -> ExtenderConfig:
        """The same extender served at `base_url` (http://host:port), path kept."""
        path = re.sub(r"^https?://[^/]+", "", self.url_prefix)
        return replace(self, url_prefix=base_url.rstrip("/") + path)

    def score_factor(self) -> int:
        """What one point of extender score adds to a node's total: weight x 100 / 10."""
        return self.weight * (MAX_NODE_SCORE // MAX_EXTENDER_PRIORITY)


def parse_go_duration(text: str) -> float:
    """A metav1.Duration ("30ms", "1.5s", "1m") in seconds."""
    units = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
    parts = re.findall(r"([0-9.]+)(ns|us|µs|ms|s|m|h)", text)
    if not parts or "".join(n + u for n, u in parts) != text.strip():
        raise ValueError(f"{text!r} is not a Go duration")
    return sum(float(n) * units[u] for n, u in parts)


def scheduler_configuration(path: Path = SCHEDULER_CONFIG) -> dict[str, Any]:
    """The KubeSchedulerConfiguration document inside the scheduler's ConfigMap."""
    config_map = yaml.safe_load(path.read_text())
    return yaml.safe_load(config_map["data"][CONFIG_KEY])


def shipped_extender(path: Path = SCHEDULER_CONFIG) -> ExtenderConfig:
    (entry,) = scheduler_configuration(path)["extenders"]
    return ExtenderConfig.from_dict(entry)


def _field(obj: Mapping[str, Any], name: str) -> Any:
    """A key looked up as Go's encoding/json does: exact first, then case-insensitively."""
    if name in obj:
        return obj[name]
    lowered = name.lower()
    return next((v for k, v in obj.items() if k.lower() == lowered), None)


@dataclass(frozen=True)
class FilterResult:
    nodes: list[str]
    failed: dict[str, str]
    failed_unresolvable: dict[str, str]


class ExtenderClient:
    """Calls one extender. `seconds` and `headers` are the last call's duration and response
    headers, for the records (kube-scheduler reads neither; the MetaPolicy server says there
    which outcome and version answered)."""

    def __init__(self, config: ExtenderConfig) -> None:
        self.config = config
        self.seconds = 0.0
        self.headers: dict[str, str] = {}

    def _args(self, pod: Mapping[str, Any], nodes: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        if self.config.node_cache_capable:
            names = [n["metadata"]["name"] for n in nodes]
            return {"Pod": pod, "Nodes": None, "NodeNames": names}
        node_list = {"metadata": {}, "items": list(nodes)}
        return {"Pod": pod, "Nodes": node_list, "NodeNames": None}

    def _post(self, verb: str, args: Mapping[str, Any]) -> Any:
        url = f"{self.config.url_prefix}/{verb}"
        body = json.dumps(args).encode()
        request = urllib.request.Request(
            url, data=body, method="POST", headers={"Content-Type": "application/json"}
        )
        started = time.monotonic()
        self.headers = {}
        try:
            with urllib.request.urlopen(request, timeout=self.config.http_timeout_s) as answer:
                status, text = answer.status, answer.read()
                self.headers = dict(answer.headers.items())
        except urllib.error.HTTPError as error:
            raise ExtenderError(f"{verb}: HTTP {error.code} from {url}") from None
        except (urllib.error.URLError, OSError, TimeoutError) as error:
            raise ExtenderError(f"{verb}: {url}: {error}") from None
        finally:
            self.seconds = time.monotonic() - started
        if status != 200:
            raise ExtenderError(f"{verb}: HTTP {status} from {url}")
        try:
            return json.loads(text)
        except ValueError as error:
            raise ExtenderError(f"{verb}: undecodable answer: {error}") from None

    def filter(self, pod: Mapping[str, Any], nodes: Sequence[Mapping[str, Any]]) -> FilterResult:
        sent = {n["metadata"]["name"] for n in nodes}
        result = self._post(self.config.filter_verb, self._args(pod, nodes))
        if not isinstance(result, Mapping):
            raise ExtenderError(f"filter: not an ExtenderFilterResult: {result!r}")
        if error := _field(result, "Error"):
            raise ExtenderError(f"filter: {error}")
        names = _field(result, "NodeNames")
        listed = _field(result, "Nodes")
        if self.config.node_cache_capable and names is not None:
            kept = list(names)
        elif listed is not None:
            kept = [_field(n.get("metadata") or {}, "name") for n in listed.get("items") or []]
        else:
            kept = []
        strangers = [n for n in kept if n not in sent]
        if strangers:
            raise ExtenderError(f"filter: claims nodes it was not sent: {strangers}")
        return FilterResult(
            nodes=kept,
            failed=dict(_field(result, "FailedNodes") or {}),
            failed_unresolvable=dict(_field(result, "FailedAndUnresolvableNodes") or {}),
        )

    def prioritize(
        self, pod: Mapping[str, Any], nodes: Sequence[Mapping[str, Any]]
    ) -> dict[str, int]:
        result = self._post(self.config.prioritize_verb, self._args(pod, nodes))
        if not isinstance(result, list):
            raise ExtenderError(f"prioritize: not a HostPriorityList: {result!r}")
        scores: dict[str, int] = {}
        for entry in result:
            host, score = _field(entry, "Host"), _field(entry, "Score")
            if not isinstance(host, str) or isinstance(score, bool) or not isinstance(score, int):
                raise ExtenderError(f"prioritize: not a HostPriority: {entry!r}")
            scores[host] = score
        return scores
