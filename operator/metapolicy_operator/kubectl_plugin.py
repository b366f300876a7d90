"""
``kubectl metapolicy``: look at a MetaPolicy and steer its lifecycle from kubectl.

kubectl runs any ``kubectl-<name>`` on the PATH as ``kubectl <name>``; this is the
``kubectl-metapolicy`` console script. The controls follow Argo Rollouts' plugin (pause,
resume, promote, abort, undo) and write only what the operator reads:

* ``pause``/``resume``: ``spec.paused`` (a merge patch);
* ``promote NAME VERSION``: annotation ``metapolicy.dev/promote: "<VERSION>"``;
* ``abort NAME``: annotation ``metapolicy.dev/abort: "<RFC 3339 time>"``;
* ``undo NAME [--to-revision V]``: annotation ``metapolicy.dev/rollback-to: "<V>"``;
* ``drill``/``adapt``: annotation ``metapolicy.dev/adapt-request`` (a JSON object whose
  ``requestedAt`` makes each request new; the operator acknowledges it in
  ``status.adaptRequest.received``).

``status`` and ``history`` read ``status`` (the timeline is ``metapolicy.timeline``'s).
Every user error is one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NoReturn

import kubernetes
import urllib3
import yaml

from metapolicy.timeline import event_name, render_history

GROUP, VERSION, PLURAL = "metapolicy.dev", "v1alpha1", "metapolicies"
RESOURCE = "metapolicy.metapolicy.dev"  # as kubectl prints it
PROMOTE = "metapolicy.dev/promote"
ABORT = "metapolicy.dev/abort"
ROLLBACK_TO = "metapolicy.dev/rollback-to"
ADAPT_REQUEST = "metapolicy.dev/adapt-request"
#: The values of the CRD's spec.strategy enum (a test keeps them equal).
STRATEGIES = (
    "auto",
    "zero_padding",
    "weight_interpolation",
    "knowledge_distillation",
    "attention_based",
)
LAST_DECISIONS = 3
TIMEOUT = 15.0  # seconds per API request

PROG = "kubectl metapolicy"


class UserError(Exception):
    """A mistake or a condition the user can fix: one line on stderr, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UserError(message)


# --------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    common.add_argument(
        "-n", "--namespace", default=argparse.SUPPRESS, help="namespace of the MetaPolicy"
    )
    common.add_argument(
        "-A",
        "--all-namespaces",
        action="store_true",
        default=argparse.SUPPRESS,
        help="status/history: every MetaPolicy in every namespace",
    )
    common.add_argument("--kubeconfig", default=argparse.SUPPRESS, help="path to a kubeconfig")
    common.add_argument("--context", default=argparse.SUPPRESS, help="kubeconfig context")
    common.add_argument(
        "-o",
        "--output",
        choices=["json"],
        default=argparse.SUPPRESS,
        help="print the object (or record) as JSON",
    )
    parser = _Parser(
        prog=PROG,
        parents=[common],
        description="Look at MetaPolicies and steer their lifecycle.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str, *, optional_name: bool = False) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, parents=[common], help=help, description=help)
        sub.add_argument("name", nargs="?" if optional_name else None, metavar="NAME")
        return sub

    command("status", "phase, versions, nodes, conditions, timeline", optional_name=True)
    command("history", "the whole timeline of status.history", optional_name=True)
    command("pause", "no training or adaptation starts (serving goes on)")
    command("resume", "undo pause")
    command("promote", "serve a stored version now").add_argument("version", metavar="VERSION")
    command("abort", "discard an Inconclusive candidate (the backup keeps serving)")
    command("undo", "roll back to the version that served before").add_argument(
        "--to-revision", metavar="VERSION", help="this version instead"
    )
    drill = command("drill", "request a rollback drill (a sabotaged candidate)")
    drill.add_argument("--reason", default="drill requested with kubectl metapolicy")
    adapt = command("adapt", "request an adaptation now")
    adapt.add_argument("--strategy", choices=STRATEGIES, default="auto")
    adapt.add_argument("--reason", default="requested with kubectl metapolicy")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; 0 on success, 2 on a user error (one line on stderr)."""
    try:
        args = _parser().parse_args(argv)
        for name, default in (
            ("namespace", None),
            ("all_namespaces", False),
            ("kubeconfig", None),
            ("context", None),
            ("output", None),
        ):
            if not hasattr(args, name):
                setattr(args, name, default)
        if args.all_namespaces and (args.command not in ("status", "history") or args.name):
            raise UserError("-A/--all-namespaces lists policies: use it with status or history")
        with _Session(args.kubeconfig, args.context, args.namespace) as session:
            COMMANDS[args.command](session, args)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


# --------------------------------------------------------------------------------------
# The API
# --------------------------------------------------------------------------------------


class _Session:
    """A client for one kubeconfig and context; API failures become one-line errors."""

    def __init__(self, kubeconfig: str | None, context: str | None, namespace: str | None):
        # As kubectl: --kubeconfig, else $KUBECONFIG (a list of files), else ~/.kube/config.
        path = kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config"
        try:
            self.client = kubernetes.config.new_client_from_config(
                config_file=path, context=context
            )
            contexts, active = kubernetes.config.list_kube_config_contexts(config_file=path)
            if context is not None:
                active = next((c for c in contexts if c["name"] == context), active)
        except (kubernetes.config.ConfigException, OSError, yaml.YAMLError, TypeError) as error:
            raise UserError(f"cannot use kubeconfig {path}: {_one_line(error)}") from error
        self.namespace = (
            namespace or (active or {}).get("context", {}).get("namespace") or ("default")
        )
        self.api = kubernetes.client.CustomObjectsApi(self.client)

    def __enter__(self) -> _Session:
        return self

    def __exit__(self, *_: object) -> None:
        self.client.close()

    def call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs, _request_timeout=TIMEOUT)
        except kubernetes.client.ApiException as error:
            if error.status == 404 and what.startswith("metapolicy"):
                raise UserError(f"{what} not found") from error
            raise UserError(f"{what}: {_api_message(error)}") from error
        except (urllib3.exceptions.HTTPError, OSError) as error:
            host = self.client.configuration.host
            raise UserError(f"cannot reach the API server at {host}: {_one_line(error)}") from error

    def get(self, name: str) -> dict[str, Any]:
        what = f'metapolicy "{name}" in namespace "{self.namespace}"'
        return self.call(
            what, self.api.get_namespaced_custom_object,
            GROUP, VERSION, self.namespace, PLURAL, name,
        )  # fmt: skip

    def list(self, all_namespaces: bool) -> list[dict[str, Any]]:
        if all_namespaces:
            listed = self.call(
                "listing metapolicies", self.api.list_cluster_custom_object, GROUP, VERSION, PLURAL
            )
        else:
            listed = self.call(
                f'listing metapolicies in namespace "{self.namespace}"',
                self.api.list_namespaced_custom_object,
                GROUP, VERSION, self.namespace, PLURAL,
            )  # fmt: skip
        return sorted(listed.get("items", []), key=_key)

    def patch(self, name: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """A merge patch; Strict, so a CRD too old for a field fails instead of dropping it."""
        what = f'metapolicy "{name}" in namespace "{self.namespace}"'
        return self.call(
            what, self.api.patch_namespaced_custom_object,
            GROUP, VERSION, self.namespace, PLURAL, name, body, field_validation="Strict",
        )  # fmt: skip


def _api_message(error: kubernetes.client.ApiException) -> str:
    """The Status message; for an unknown field, just that (the server quotes the object)."""
    try:
        message = json.loads(error.body or "{}").get("message")
    except (ValueError, AttributeError):
        message = None
    message = _one_line(message or f"HTTP {error.status} {error.reason}")
    if "strict decoding error:" in message:
        unknown = message[message.index("strict decoding error:") :]
        return f"{unknown} (the MetaPolicy CRD in the cluster is older than this plugin?)"
    return message


def _one_line(error: object) -> str:
    return " ".join(str(error).split())


def _key(obj: Mapping[str, Any]) -> tuple[str, str]:
    meta = obj.get("metadata", {})
    return meta.get("namespace", ""), meta.get("name", "")


# --------------------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------------------


def cmd_status(session: _Session, args: argparse.Namespace) -> None:
    if args.name is None:
        objs = session.list(args.all_namespaces)
        _print(objs) if args.output else _print_text(_summary(objs, args.all_namespaces))
        return
    obj = session.get(args.name)
    _print(obj) if args.output else _print_text(describe(obj))


def cmd_history(session: _Session, args: argparse.Namespace) -> None:
    if args.name is not None:
        obj = session.get(args.name)
        history = (obj.get("status") or {}).get("history") or []
        _print(history) if args.output else _print_text(_timeline(history))
        return
    objs = session.list(args.all_namespaces)
    if args.output:
        _print({"/".join(_key(o)): (o.get("status") or {}).get("history") or [] for o in objs})
        return
    blocks = []
    for obj in objs:
        history = (obj.get("status") or {}).get("history") or []
        blocks.append(f"{'/'.join(_key(obj))}:\n{_indent(_timeline(history))}")
    print("\n\n".join(blocks) if blocks else "No MetaPolicies found.")


def cmd_pause(session: _Session, args: argparse.Namespace) -> None:
    _done(session.patch(args.name, {"spec": {"paused": True}}), "paused", args)


def cmd_resume(session: _Session, args: argparse.Namespace) -> None:
    _done(session.patch(args.name, {"spec": {"paused": False}}), "resumed", args)


def cmd_promote(session: _Session, args: argparse.Namespace) -> None:
    version = parse_version(args.version)
    obj = _annotate(session, args.name, {PROMOTE: version})
    _done(obj, f"promotion of version {version} requested", args)


def cmd_abort(session: _Session, args: argparse.Namespace) -> None:
    obj = _annotate(session, args.name, {ABORT: now()})
    _done(obj, "abort requested (the backup keeps serving)", args)


def cmd_undo(session: _Session, args: argparse.Namespace) -> None:
    if args.to_revision is not None:
        version = parse_version(args.to_revision)
    else:
        version = previous_version(session.get(args.name), session.namespace)
    obj = _annotate(session, args.name, {ROLLBACK_TO: version})
    _done(obj, f"rollback to version {version} requested", args)


def cmd_drill(session: _Session, args: argparse.Namespace) -> None:
    request = {"drill": True, "reason": args.reason, "requestedAt": now()}
    obj = _annotate(session, args.name, {ADAPT_REQUEST: json.dumps(request)})
    _done(obj, "rollback drill requested", args)


def cmd_adapt(session: _Session, args: argparse.Namespace) -> None:
    request = {"strategy": args.strategy, "reason": args.reason, "requestedAt": now()}
    obj = _annotate(session, args.name, {ADAPT_REQUEST: json.dumps(request)})
    _done(obj, f"adaptation requested (strategy {args.strategy})", args)


COMMANDS: dict[str, Callable[[_Session, argparse.Namespace], None]] = {
    "status": cmd_status,
    "history": cmd_history,
    "pause": cmd_pause,
    "resume": cmd_resume,
    "promote": cmd_promote,
    "abort": cmd_abort,
    "undo": cmd_undo,
    "drill": cmd_drill,
    "adapt": cmd_adapt,
}


def _annotate(session: _Session, name: str, annotations: Mapping[str, str]) -> dict[str, Any]:
    session.get(name)  # a clear "not found" before anything is written
    return session.patch(name, {"metadata": {"annotations": dict(annotations)}})


def _done(obj: Mapping[str, Any], what: str, args: argparse.Namespace) -> None:
    _print(obj) if args.output else _print_text(f"{RESOURCE}/{obj['metadata']['name']} {what}")


def _print(value: Any) -> None:
    """``-o json``: the object, list or records as they are."""
    print(json.dumps(value, indent=2))


def _print_text(text: str) -> None:
    print(text)


def now() -> str:
    """The current time in RFC 3339 (UTC, microseconds): a new value for every request."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_version(text: str) -> str:
    """A stored policy version (``3`` or ``v3``) as the annotation value ``"3"``."""
    match = re.fullmatch(r"[vV]?(\d+)", text.strip())
    if match is None or int(match[1]) < 1:
        raise UserError(f"version {text!r} is not a policy version (a positive number, e.g. 3)")
    return str(int(match[1]))


def previous_version(obj: Mapping[str, Any], namespace: str) -> str:
    """The version that served before the active one: the backup, else the history's."""
    status = obj.get("status") or {}
    if status.get("backupVersion") is not None:
        return str(status["backupVersion"])
    active = status.get("activeVersion")
    for record in reversed(status.get("history") or []):
        version = record.get("version")
        if record.get("outcome") == "promoted" and version is not None and version != active:
            return str(version)
    name = obj.get("metadata", {}).get("name")
    raise UserError(
        f'metapolicy "{name}" in namespace "{namespace}" has no earlier version to roll back '
        "to (no status.backupVersion, no earlier promoted version in status.history)"
    )


# --------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------


def describe(obj: Mapping[str, Any]) -> str:
    """The status of one policy, for people."""
    meta, spec, status = obj.get("metadata", {}), obj.get("spec") or {}, obj.get("status") or {}
    annotations = meta.get("annotations") or {}
    active, backup = status.get("activeVersion"), status.get("backupVersion")
    lines = [
        f"Name:       {meta.get('name')}",
        f"Namespace:  {meta.get('namespace')}",
        f"Phase:      {status.get('phase', '<none>')}"
        + ("  (paused: no training or adaptation starts)" if spec.get("paused") else ""),
        f"Message:    {status.get('message', '')}",
        f"Serving:    {_version(active)}" + (f"  (backup {_version(backup)})" if backup else ""),
        f"Nodes:      {status.get('currentNodes', 0)} in the policy, "
        f"{status.get('eligibleNodes', 0)} eligible",
    ]
    requests = [f"{key}={annotations[key]}" for key in (PROMOTE, ABORT, ROLLBACK_TO, ADAPT_REQUEST)
                if key in annotations]  # fmt: skip
    acknowledged = status.get("adaptRequest") or {}
    if requests:
        lines.append("Requests:   " + "\n            ".join(requests))
    if acknowledged.get("state"):
        lines.append(f"Last adapt request: {acknowledged['state']}")
    lines += ["", "Conditions:", _indent(_conditions(status.get("conditions") or []))]
    history = status.get("history") or []
    lines += ["", "Timeline (status.history):", _indent(_timeline(history))]
    if history:
        lines += ["", "Last decisions:"]
        lines += [f"  {_decision(r)}" for r in history[-LAST_DECISIONS:][::-1]]
    return "\n".join(lines)


def _summary(objs: Sequence[Mapping[str, Any]], all_namespaces: bool) -> str:
    if not objs:
        return "No MetaPolicies found."
    header = ["NAMESPACE"] * all_namespaces + ["NAME", "PHASE", "VERSION", "NODES", "MESSAGE"]
    rows = [header]
    for obj in objs:
        status = obj.get("status") or {}
        phase = status.get("phase", "<none>")
        if (obj.get("spec") or {}).get("paused"):
            phase += " (paused)"
        rows.append(
            [obj["metadata"].get("namespace", "")] * all_namespaces
            + [
                obj["metadata"]["name"],
                phase,
                _version(status.get("activeVersion")),
                f"{status.get('currentNodes', 0)}/{status.get('eligibleNodes', 0)}",
                status.get("message", ""),
            ]
        )
    return _columns(rows)


def _conditions(conditions: Sequence[Mapping[str, Any]]) -> str:
    if not conditions:
        return "<none>"
    rows = [["TYPE", "STATUS", "REASON", "SINCE", "MESSAGE"]]
    rows += [
        [
            c.get("type", ""),
            c.get("status", ""),
            c.get("reason", ""),
            c.get("lastTransitionTime", ""),
            c.get("message", ""),
        ]
        for c in conditions
    ]
    return _columns(rows)


def _timeline(history: Sequence[Mapping[str, Any]]) -> str:
    return render_history(history) if history else "<no training or adaptation yet>"


def _decision(record: Mapping[str, Any]) -> str:
    """``<when>  scale up: version 3 promoted (zero_padding): <reason>``."""
    when = record.get("finishedAt") or record.get("startedAt") or "-"
    text = f"{when}  {event_name(record)}:"
    if record.get("version") is not None:
        text += f" version {record['version']}"
    text += f" {record.get('outcome', '?')}"
    if record.get("strategy"):
        text += f" ({record['strategy']})"
    return text + (f": {record['reason']}" if record.get("reason") else "")


def _version(value: Any) -> str:
    return "<none>" if value is None else f"version {value}"


def _columns(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )


def _indent(text: str) -> str:
    return "\n".join(f"  {line}" if line else line for line in text.splitlines())


if __name__ == "__main__":
    sys.exit(main())
