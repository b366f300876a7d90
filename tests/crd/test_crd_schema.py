"""Offline checks of the MetaPolicy CustomResourceDefinition (crds/metapolicy.yaml).

There is no API server here, so the tests mimic what it does with a custom resource, with
the same code (``e2e/crd_schema.py``) that the embedded cluster's admission runs:

1. apply the schema ``default`` values (absent fields of objects that exist, recursively,
   the way structural defaulting does);
2. validate against the OpenAPI v3 schema, translated to JSON Schema 2020-12 for the
   ``jsonschema`` library (unknown fields are rejected, like kubectl's default strict field
   validation; the API server itself would prune them);
3. evaluate every ``x-kubernetes-validations`` CEL rule with ``celpy`` (PyPI: cel-python),
   binding ``self`` to a value typed from the schema (integer -> int, number -> double).
   CEL rules only run once the schema accepts the object, so each bad case below is
   rejected by exactly one layer.

Also checked: the CRD is one structural YAML document, every property has a description,
printer columns point at real fields, and the examples in manifests/examples are accepted.
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from e2e import crd_schema
from e2e.crd_schema import (
    HAVE_CEL,
    apply_defaults,
    cel_errors,
    compile_rule,
    eval_rule,
    to_json_schema,
    walk_schema,
)
from metapolicy.record import Outcome
from metapolicy_operator.metrics import PHASES

ROOT = Path(__file__).resolve().parents[2]
CRD_PATH = ROOT / "crds" / "metapolicy.yaml"
EXAMPLES_DIR = ROOT / "manifests" / "examples"
BAD_SPECS_PATH = Path(__file__).with_name("bad_specs.yaml")

GROUP = "metapolicy.dev"
VERSION = "v1alpha1"
KIND = "MetaPolicy"

# The documented defaults: what an empty spec becomes once the API server has defaulted it.
DOCUMENTED_DEFAULTS: dict[str, Any] = {
    "maxNodes": 20,
    "hiddenSize": 64,
    "architecture": "node-set",
    "strategy": "auto",
    "paused": False,
    "adaptation": {
        "settleSeconds": 10,
        "budgetSteps": 50000,
        "freeze": "gradual",
        "maxAttempts": 3,
        "backoffSeconds": 30,
    },
    "validation": {
        "episodes": 16,
        "minRetention": 0.9,
        "onInconclusive": "pause",
        "rollback": {"enabled": True},
    },
    "workload": {
        "load": 0.6,
        "burstFactor": 3,
        "burstProbability": 0.02,
        "burstLength": 20,
        "episodeTasks": 256,
        "source": "synthetic",
        "minObservedTasks": 1000,
        "recording": {"maxTasks": 50000, "maxAgeSeconds": 604800, "flushSeconds": 30},
    },
    "training": {"seed": 0, "backend": "inProcess", "device": "auto"},  # budgetSteps: by arch
    "storage": {"backend": "configmap", "keepVersions": 5},
    "serving": {"mode": "active"},
}

# Enum values the operator code relies on.
ENUMS: dict[str, list[str]] = {
    "spec.architecture": ["node-set", "slot-mlp"],
    "spec.strategy": [
        "auto",
        "zero_padding",
        "weight_interpolation",
        "knowledge_distillation",
        "attention_based",
    ],
    "spec.adaptation.freeze": ["none", "trunk", "gradual"],
    "spec.storage.backend": ["configmap", "filesystem"],
    "spec.workload.source": ["synthetic", "trace", "observed"],
    "spec.workload.trace.format": ["auto", "generic", "alibaba-gpu-v2023"],
    "spec.serving.mode": ["active", "shadow", "off"],
    "spec.training.device": ["auto", "cpu", "cuda"],
    "spec.nodeSelector.matchExpressions[].operator": ["In", "NotIn", "Exists", "DoesNotExist"],
    "status.phase": list(PHASES),
    "status.lastAdaptation.outcome": [outcome.value for outcome in Outcome],
    "status.conditions[].status": ["True", "False", "Unknown"],
}


# --------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------


@functools.cache
def crd_documents() -> tuple[Any, ...]:
    return tuple(yaml.safe_load_all(CRD_PATH.read_text()))


def crd() -> dict[str, Any]:
    return copy.deepcopy(crd_documents()[0])


def version() -> dict[str, Any]:
    return crd()["spec"]["versions"][0]


def schema() -> dict[str, Any]:
    return version()["schema"]["openAPIV3Schema"]


def node_at(dotted: str, root: dict[str, Any] | None = None) -> dict[str, Any]:
    """Schema node for a path like ``spec.workload.taskClasses[].cpu``."""
    return crd_schema.node_at(root if root is not None else schema(), dotted)


def example_files() -> list[Path]:
    return sorted(EXAMPLES_DIR.glob("*.yaml"))


def example_objects() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in example_files():
        for i, doc in enumerate(yaml.safe_load_all(path.read_text())):
            if isinstance(doc, dict) and doc.get("kind") == KIND:
                out.append((f"{path.name}#{i}", doc))
    return out


def load_example(name: str) -> dict[str, Any]:
    return yaml.safe_load((EXAMPLES_DIR / name).read_text())


def wrap(spec: Any, status: Any = None) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "metadata": {"name": "test", "namespace": "default"},
        "spec": copy.deepcopy(spec),
    }
    if status is not None:
        obj["status"] = copy.deepcopy(status)
    return obj


def schema_errors(value: Any, at: str = "") -> list[jsonschema.ValidationError]:
    """Errors of ``value`` against the schema node at ``at`` (default: the whole object)."""
    return crd_schema.schema_errors(value, node_at(at) if at else schema())


def dotted(err_path: Any) -> str:
    return ".".join(str(p) for p in err_path)


def defaulted(obj: dict[str, Any]) -> dict[str, Any]:
    return apply_defaults(copy.deepcopy(obj), schema())


needs_cel = pytest.mark.skipif(
    not HAVE_CEL, reason="CEL rules need cel-python (pip install cel-python)"
)


def admit(obj: dict[str, Any]) -> tuple[dict[str, Any], list[Any], list[crd_schema.RuleFailure]]:
    """Default, validate against the schema, then (only if that passed and celpy is
    installed) run the CEL rules."""
    obj = defaulted(obj)
    errs = schema_errors(obj)
    cel = [] if errs or not HAVE_CEL else cel_errors(obj, schema())
    return obj, errs, cel


def all_rules() -> list[tuple[str, str]]:
    return [
        (path, rule["rule"])
        for path, node in walk_schema(schema())
        for rule in node.get("x-kubernetes-validations", [])
    ]


# --------------------------------------------------------------------------------------
# The CRD document itself
# --------------------------------------------------------------------------------------


def test_crd_is_one_yaml_document():
    docs = crd_documents()
    assert len(docs) == 1
    assert docs[0]["apiVersion"] == "apiextensions.k8s.io/v1"
    assert docs[0]["kind"] == "CustomResourceDefinition"


def test_names_scope_and_versions():
    spec = crd()["spec"]
    assert crd()["metadata"]["name"] == f"metapolicies.{GROUP}"
    assert spec["group"] == GROUP
    assert spec["scope"] == "Namespaced"
    assert spec["names"] == {
        "kind": KIND,
        "listKind": f"{KIND}List",
        "plural": "metapolicies",
        "singular": "metapolicy",
        "shortNames": ["mp"],
    }
    (v,) = spec["versions"]
    assert (v["name"], v["served"], v["storage"]) == (VERSION, True, True)
    assert v["subresources"] == {"status": {}}


def test_printer_columns_point_at_schema_fields():
    cols = version()["additionalPrinterColumns"]
    default_view = [c["name"] for c in cols if c.get("priority", 0) == 0]
    assert default_view == ["Nodes", "Max", "Phase", "Strategy", "Retention", "Version", "Age"]
    expected_paths = {
        "Nodes": ".status.currentNodes",
        "Max": ".spec.maxNodes",
        "Phase": ".status.phase",
        "Strategy": ".status.lastAdaptation.strategy",
        "Retention": ".status.lastAdaptation.performanceRetention",
        "Version": ".status.activeVersion",
        "Age": ".metadata.creationTimestamp",
    }
    for col in cols:
        if col["name"] in expected_paths:
            assert col["jsonPath"] == expected_paths[col["name"]]
        path = col["jsonPath"]
        assert path.startswith(".")
        if path.startswith(".metadata."):
            continue  # ObjectMeta is not part of the CRD schema
        node = node_at(path[1:])
        column_type = {"date": "string"}.get(col["type"], col["type"])
        assert node["type"] == column_type, col["name"]


def test_every_property_has_a_description():
    missing = []
    for path, node in walk_schema(schema()):
        object_item = path.endswith("[]") and node.get("type") == "object"
        is_property = path and not path.endswith(("[]", "{}"))
        if (is_property or object_item or path == "") and not node.get("description"):
            missing.append(path or "<root>")
    assert not missing, f"fields without a description (kubectl explain): {missing}"


FORBIDDEN_KEYS = {
    "definitions",
    "dependencies",
    "deprecated",
    "discriminator",
    "id",
    "patternProperties",
    "readOnly",
    "writeOnly",
    "xml",
    "$ref",
}


def test_schema_is_structural():
    root = schema()
    assert root["type"] == "object"
    assert "default" not in root and "x-kubernetes-validations" not in root
    meta = root["properties"]["metadata"]
    assert set(meta) <= {"type", "description"}, "only name/generateName may be restricted"
    problems = []
    for path, node in walk_schema(root):
        where = path or "<root>"
        untyped_ok = node.get("x-kubernetes-preserve-unknown-fields") or node.get(
            "x-kubernetes-int-or-string"
        )
        if "type" not in node and not untyped_ok:
            problems.append(f"{where}: no type")
        if FORBIDDEN_KEYS & set(node):
            problems.append(f"{where}: forbidden {sorted(FORBIDDEN_KEYS & set(node))}")
        if node.get("uniqueItems") is True:
            problems.append(f"{where}: uniqueItems: true is not allowed")
        if node.get("additionalProperties") is False:
            problems.append(f"{where}: additionalProperties: false is not allowed")
        if "additionalProperties" in node and "properties" in node:
            problems.append(f"{where}: properties and additionalProperties together")
        if "{}" in path and "default" in node:
            problems.append(f"{where}: default inside additionalProperties")
        if node.get("x-kubernetes-list-type") == "map":
            items = node["items"]
            for key in node["x-kubernetes-list-map-keys"]:
                item = items["properties"][key]
                if key not in items.get("required", []) and "default" not in item:
                    problems.append(f"{where}: list-map key {key} neither required nor defaulted")
        if node.get("type") == "array" and "items" not in node:
            problems.append(f"{where}: array without items")
        for key in ("minimum", "maximum"):
            if key in node and node.get("type") not in ("integer", "number"):
                problems.append(f"{where}: {key} on a non-numeric field")
        for key in ("required",):
            for name in node.get(key, []):
                if name not in node.get("properties", {}):
                    problems.append(f"{where}: required field {name} is not declared")
    assert not problems, "\n".join(problems)
    # The whole schema translates (this also rejects unknown or misspelt keywords).
    jsonschema.Draft202012Validator.check_schema(to_json_schema(root))


def test_preserve_unknown_fields_only_on_status_kopf():
    preserving = [
        path
        for path, node in walk_schema(schema())
        if node.get("x-kubernetes-preserve-unknown-fields")
    ]
    assert preserving == ["status.kopf"]


def test_history_items_have_the_same_fields_as_last_adaptation():
    status = schema()["properties"]["status"]["properties"]
    assert status["history"]["items"]["properties"] == status["lastAdaptation"]["properties"]
    assert status["history"]["maxItems"] == 50


def test_status_conditions_are_a_map_list_keyed_by_type():
    cond = node_at("status.conditions")
    assert cond["x-kubernetes-list-type"] == "map"
    assert cond["x-kubernetes-list-map-keys"] == ["type"]
    props = cond["items"]["properties"]
    assert set(props) == {
        "type",
        "status",
        "reason",
        "message",
        "lastTransitionTime",
        "observedGeneration",
    }
    assert props["lastTransitionTime"]["format"] == "date-time"


@pytest.mark.parametrize("path", sorted(ENUMS))
def test_enum_values_match_what_the_operator_reads(path):
    assert node_at(path)["enum"] == ENUMS[path]


def test_every_default_validates_against_its_own_schema():
    """The API server rejects a CRD whose defaults do not validate."""
    checked = 0
    for path, node in walk_schema(schema()):
        if "default" in node:
            errs = schema_errors(node["default"], path)
            assert not errs, f"{path}: default {node['default']!r}: {errs[0].message}"
            checked += 1
    assert checked >= 25


# --------------------------------------------------------------------------------------
# Examples
# --------------------------------------------------------------------------------------


def test_the_three_examples_exist():
    names = {p.name for p in example_files()}
    assert {
        "metapolicy-basic.yaml",
        "metapolicy-full.yaml",
        "metapolicy-edge-zone.yaml",
    } <= names
    for _, obj in example_objects():
        assert obj["apiVersion"] == f"{GROUP}/{VERSION}"
        assert obj["metadata"]["namespace"] == "default"


@pytest.mark.parametrize(
    "obj", [o for _, o in example_objects()], ids=[i for i, _ in example_objects()]
)
def test_example_is_accepted(obj):
    # As sent (kubectl validates before defaulting) ...
    assert [e.message for e in schema_errors(obj)] == []
    # ... and as stored after defaulting, including the CEL rules.
    _, errs, cel = admit(obj)
    assert [e.message for e in errs] == []
    assert cel == []


def test_full_example_sets_every_spec_field():
    spec = load_example("metapolicy-full.yaml")["spec"]
    missing = []

    def visit(value: Any, node: dict[str, Any], path: str) -> None:
        for key, sub in node.get("properties", {}).items():
            items = value if isinstance(value, list) else [value]
            present = [v[key] for v in items if isinstance(v, dict) and key in v]
            if not present:
                missing.append(f"{path}.{key}")
                continue
            for v in present:
                target = sub["items"] if sub.get("type") == "array" else sub
                visit(v, target, f"{path}.{key}")

    visit(spec, node_at("spec"), "spec")
    assert not missing, f"metapolicy-full.yaml leaves out {missing}"
    assert spec["storage"]["backend"] == "filesystem"
    # Nothing is left for defaulting to fill in.
    assert defaulted(wrap(spec))["spec"] == spec


def test_edge_zone_example_selects_other_nodes_than_full():
    edge = load_example("metapolicy-edge-zone.yaml")
    full = load_example("metapolicy-full.yaml")
    assert edge["metadata"]["name"] != full["metadata"]["name"]
    assert edge["spec"]["nodeSelector"] != full["spec"]["nodeSelector"]
    assert edge["spec"]["nodeSelector"]["matchLabels"]["topology.kubernetes.io/zone"] == "edge-a"


# --------------------------------------------------------------------------------------
# Defaults
# --------------------------------------------------------------------------------------


def test_basic_example_is_minimal():
    basic = load_example("metapolicy-basic.yaml")
    assert basic["spec"] in ({}, None)


def test_defaults_applied_to_basic_example_are_the_documented_ones():
    obj = defaulted(load_example("metapolicy-basic.yaml"))
    assert obj["spec"] == DOCUMENTED_DEFAULTS
    # No default invents a selector, task classes or a storage path.
    assert "nodeSelector" not in obj["spec"]
    assert "taskClasses" not in obj["spec"]["workload"]
    assert "path" not in obj["spec"]["storage"]
    assert "status" not in obj


def test_absent_spec_is_defaulted_too():
    obj = load_example("metapolicy-basic.yaml")
    del obj["spec"]
    assert defaulted(obj)["spec"] == DOCUMENTED_DEFAULTS


def test_defaults_fill_gaps_without_overriding_set_values():
    spec = {
        "maxNodes": 5,
        "adaptation": {"freeze": "none"},
        "validation": {"rollback": {}},
        "storage": {"backend": "filesystem", "path": "/data"},
        "workload": {"taskClasses": [{"name": "web", "weight": 1}]},
    }
    out = defaulted(wrap(spec))["spec"]
    assert out["maxNodes"] == 5
    assert out["adaptation"] == {**DOCUMENTED_DEFAULTS["adaptation"], "freeze": "none"}
    assert out["validation"]["rollback"] == {"enabled": True}
    assert out["storage"] == {"backend": "filesystem", "path": "/data", "keepVersions": 5}
    assert out["workload"]["taskClasses"] == [{"name": "web", "weight": 1}]
    assert out["hiddenSize"] == 64


def test_null_fields_are_defaulted():
    out = defaulted(wrap({"maxNodes": None, "adaptation": None}))["spec"]
    assert out["maxNodes"] == 20
    assert out["adaptation"] == DOCUMENTED_DEFAULTS["adaptation"]


# --------------------------------------------------------------------------------------
# Bad specs
# --------------------------------------------------------------------------------------

BAD_SPECS = yaml.safe_load(BAD_SPECS_PATH.read_text())


def test_bad_spec_list_is_big_and_well_formed():
    assert len(BAD_SPECS) >= 15
    ids = [case["id"] for case in BAD_SPECS]
    assert len(ids) == len(set(ids))
    for case in BAD_SPECS:
        assert ("keyword" in case) != ("cel" in case), case["id"]
    assert sum("cel" in case for case in BAD_SPECS) >= 5


@pytest.mark.parametrize("case", BAD_SPECS, ids=[c["id"] for c in BAD_SPECS])
def test_bad_spec_is_rejected_for_its_own_reason(case):
    _, errs, cel = admit(wrap(case["spec"]))
    if "keyword" in case:
        got = [(dotted(e.absolute_path), e.validator) for e in errs]
        assert got, f"{case['id']}: accepted by the schema"
        assert set(got) == {(case["path"], case["keyword"])}, [e.message for e in errs]
    else:
        if not HAVE_CEL:
            pytest.skip("CEL rules need cel-python")
        assert not errs, [e.message for e in errs]
        assert cel, f"{case['id']}: accepted by the CEL rules"
        assert {failure.path for failure in cel} == {case["path"]}, cel
        assert any(case["cel"] in failure.message for failure in cel), cel


# --------------------------------------------------------------------------------------
# CEL rules, one by one
# --------------------------------------------------------------------------------------

RANGE = "spec.workload.taskClasses[].{}"
SELECTOR_ITEM = "spec.nodeSelector.matchExpressions[]"
POD_SELECTOR_ITEM = "spec.podSelector.matchExpressions[]"

# (schema path, self value, expected result of every rule at that node)
CEL_CASES: list[tuple[str, Any, bool]] = [
    ("spec", {}, True),  # the raw default
    ("spec", {"architecture": "slot-mlp", "maxNodes": 256}, True),
    ("spec", {"architecture": "node-set", "maxNodes": 5000}, True),
    ("spec", {"maxNodes": 5000}, True),
    ("spec", {"architecture": "slot-mlp", "maxNodes": 257}, False),
    ("spec.workload", {"source": "trace", "trace": {"path": "/t.csv"}}, True),
    ("spec.workload", {"source": "observed"}, True),
    ("spec.workload", {"source": "trace"}, False),
    ("spec.storage", {}, True),  # the raw default the API server checks at CRD creation
    ("spec.storage", {"backend": "configmap"}, True),
    ("spec.storage", {"backend": "configmap", "keepVersions": 3}, True),
    ("spec.storage", {"backend": "filesystem", "path": "/var/lib/mp"}, True),
    ("spec.storage", {"backend": "filesystem"}, False),
    ("spec.storage", {"backend": "configmap", "path": "/var/lib/mp"}, False),
    ("spec.storage", {"path": "/var/lib/mp"}, False),
    (SELECTOR_ITEM, {"key": "zone", "operator": "In", "values": ["a"]}, True),
    (SELECTOR_ITEM, {"key": "zone", "operator": "NotIn", "values": ["a", "b"]}, True),
    (SELECTOR_ITEM, {"key": "zone", "operator": "Exists"}, True),
    (SELECTOR_ITEM, {"key": "zone", "operator": "DoesNotExist", "values": []}, True),
    (SELECTOR_ITEM, {"key": "zone", "operator": "In"}, False),
    (SELECTOR_ITEM, {"key": "zone", "operator": "In", "values": []}, False),
    (SELECTOR_ITEM, {"key": "zone", "operator": "NotIn"}, False),
    (SELECTOR_ITEM, {"key": "zone", "operator": "Exists", "values": ["a"]}, False),
    (SELECTOR_ITEM, {"key": "zone", "operator": "DoesNotExist", "values": ["a"]}, False),
    # spec.podSelector shares nodeSelector's properties (and so its rule) through a YAML anchor
    (POD_SELECTOR_ITEM, {"key": "app", "operator": "In", "values": ["x"]}, True),
    (POD_SELECTOR_ITEM, {"key": "app", "operator": "In"}, False),
]
for _range in ("cpu", "memoryMiB", "durationSeconds"):
    CEL_CASES += [
        (RANGE.format(_range), {"min": 1, "max": 2}, True),  # integral JSON numbers
        (RANGE.format(_range), {"min": 0.5, "max": 0.5}, True),
        (RANGE.format(_range), {"min": 0.25, "max": 8}, True),
        (RANGE.format(_range), {"min": 3, "max": 2.5}, False),
        (RANGE.format(_range), {"min": 2, "max": 1}, False),
    ]


def _rules_at(path: str) -> list[str]:
    return [r["rule"] for r in node_at(path).get("x-kubernetes-validations", [])]


@needs_cel
def test_every_rule_compiles():
    import celpy

    rules = all_rules()
    assert len(rules) >= 5
    for path, rule in rules:
        try:
            compile_rule(rule)
        except celpy.CELParseError as exc:  # pragma: no cover - failure path
            pytest.fail(f"{path}: {rule!r} does not compile: {exc}")


@needs_cel
def test_every_rule_has_a_message_and_is_tested_both_ways():
    for path, node in walk_schema(schema()):
        for rule in node.get("x-kubernetes-validations", []):
            assert rule.get("message"), f"{path}: {rule['rule']} has no message"
            assert "\n" not in rule["message"]
    covered: dict[tuple[str, str], set[bool]] = {}
    for path, value, _ in CEL_CASES:
        node = node_at(path)
        for rule in _rules_at(path):
            covered.setdefault((path, rule), set()).add(eval_rule(rule, value, node)[0])
    for path, rule in all_rules():
        assert covered.get((path, rule)) == {True, False}, (
            f"{path}: {rule!r} lacks a good or bad case"
        )


@needs_cel
@pytest.mark.parametrize(("path", "value", "expected"), CEL_CASES)
def test_cel_rule(path, value, expected):
    node = node_at(path)
    rules = _rules_at(path)
    assert rules
    results = [eval_rule(rule, value, node) for rule in rules]
    for (_, detail), rule in zip(results, rules, strict=True):
        assert "evaluation error" not in detail, f"{rule!r} on {value!r}: {detail}"
    assert all(ok for ok, _ in results) is expected, list(zip(rules, results, strict=True))


@needs_cel
def test_storage_rules_reject_each_half_separately():
    node = node_at("spec.storage")
    required, forbidden = node["x-kubernetes-validations"]
    assert eval_rule(required["rule"], {"backend": "filesystem"}, node)[0] is False
    assert eval_rule(forbidden["rule"], {"backend": "filesystem"}, node)[0] is True
    assert eval_rule(required["rule"], {"backend": "configmap", "path": "/x"}, node)[0] is True
    assert eval_rule(forbidden["rule"], {"backend": "configmap", "path": "/x"}, node)[0] is False
    for rule in (required, forbidden):
        assert rule["fieldPath"] == ".path"
        assert rule["reason"] in {"FieldValueRequired", "FieldValueForbidden"}


@needs_cel
def test_rules_pass_on_every_raw_default():
    """At CRD creation the API server runs the rules on each ``default`` as written."""
    for path, node in walk_schema(schema()):
        if "default" in node:
            assert cel_errors(node["default"], node, path) == [], path


# --------------------------------------------------------------------------------------
# Status, as the operator writes it
# --------------------------------------------------------------------------------------

RECORD = {
    "oldNodes": 4,
    "newNodes": 5,
    "addedNodes": ["node-5"],
    "removedNodes": [],
    "strategy": "weight_interpolation",
    "adaptationTime": 42.5,
    "performanceRetention": 0.97,
    "retentionInterval": [0.93, 1.01],
    "candidateScore": -12.5,
    "backupScore": -12.9,
    "backupMaskedScore": -14.0,
    "outcome": "promoted",
    "reason": "retention 0.97 >= 0.9",
    "attempt": 1,
    "trigger": "nodes-changed",
    "version": 3,
    "startedAt": "2025-01-01T10:00:00Z",
    "finishedAt": "2025-01-01T10:00:42.5+00:00",
}
STATUS = {
    "phase": "Ready",
    "nodes": ["node-1", "node-2", "node-3", "node-4", "node-5"],
    "currentNodes": 5,
    "eligibleNodes": 5,
    "activeVersion": 3,
    "backupVersion": 2,
    "observedGeneration": 7,
    "message": "serving version 3",
    "lastAdaptation": RECORD,
    "history": [{**RECORD, "outcome": "rolled_back", "version": 2}, RECORD],
    "adaptRequest": {"received": "2025-01-01T09:59:00Z", "strategy": "auto", "reason": "test"},
    "conditions": [
        {
            "type": "Ready",
            "status": "True",
            "reason": "Promoted",
            "message": "version 3 promoted",
            "lastTransitionTime": "2025-01-01T10:00:42Z",
            "observedGeneration": 7,
        },
        {"type": "Adapting", "status": "False"},
    ],
    "kopf": {"progress": {"reconcile": {"started": "2025-01-01T10:00:00", "retries": 0}}},
}


def test_operator_status_is_accepted():
    obj = wrap({}, status=STATUS)
    assert [e.message for e in schema_errors(defaulted(obj))] == []


@pytest.mark.parametrize(
    ("patch", "path", "keyword"),
    [
        ({"phase": "Running"}, "status.phase", "enum"),
        ({"currentNodes": "5"}, "status.currentNodes", "type"),
        ({"lastAdaptation": {**RECORD, "outcome": "ok"}}, "status.lastAdaptation.outcome", "enum"),
        (
            {"lastAdaptation": {**RECORD, "retentionInterval": [0.9]}},
            "status.lastAdaptation.retentionInterval",
            "minItems",
        ),
        (
            {"lastAdaptation": {**RECORD, "startedAt": "yesterday"}},
            "status.lastAdaptation.startedAt",
            "format",
        ),
        ({"history": [RECORD] * 51}, "status.history", "maxItems"),
        (
            {"conditions": [{"type": "Ready", "status": "True"}] * 2},
            "status.conditions",
            "x-kubernetes-list-type",
        ),
        (
            {"conditions": [{"type": "Ready", "status": "Yes"}]},
            "status.conditions.0.status",
            "enum",
        ),
        ({"unknownField": 1}, "status", "additionalProperties"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_bad_status_is_rejected(patch, path, keyword):
    errs = schema_errors(defaulted(wrap({}, status={**STATUS, **patch})))
    assert {(dotted(e.absolute_path), e.validator) for e in errs} == {(path, keyword)}
