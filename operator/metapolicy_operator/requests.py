"""Manual requests, as annotations on the MetaPolicy (after Argo Rollouts' controls).

A request is level-triggered: it is pending while its annotation's value differs from the
value acknowledged in status, so a crash between acting and acknowledging repeats it, and every
action here is safe to repeat. Change the value (the kubectl plugin adds a timestamp) to ask
again.

- `metapolicy.dev/adapt-request`: `{"strategy": S, "reason": R, "drill": bool}`: adapt now.
- `metapolicy.dev/promote: "<version>"`: serve a stored candidate (an inconclusive one).
- `metapolicy.dev/abort: "<anything new>"`: discard the inconclusive candidate.
- `metapolicy.dev/rollback-to: "<version>"`: serve a previously active version again.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

from metapolicy.strategies import UnknownStrategy, check_strategy

ADAPT_REQUEST = "metapolicy.dev/adapt-request"
PROMOTE = "metapolicy.dev/promote"
ABORT = "metapolicy.dev/abort"
ROLLBACK_TO = "metapolicy.dev/rollback-to"

#: annotation -> key under status.manualRequests (adapt requests keep status.adaptRequest)
CONTROL_KINDS = {PROMOTE: "promote", ABORT: "abort", ROLLBACK_TO: "rollbackTo"}


class InvalidRequest(ValueError):
    pass


@dataclass(frozen=True)
class Request:
    annotation: str
    raw: str
    version: int | None = None  # promote, rollback-to
    strategy: str = "auto"  # adapt
    reason: str | None = None  # adapt
    drill: bool = False  # adapt

    @property
    def kind(self) -> str:
        return CONTROL_KINDS.get(self.annotation, "adapt")


def acknowledged(status: Mapping, annotation: str) -> str | None:
    """The value of `annotation` the operator last handled."""
    if annotation == ADAPT_REQUEST:
        return (status.get("adaptRequest") or {}).get("received")
    requests = status.get("manualRequests") or {}
    return (requests.get(CONTROL_KINDS[annotation]) or {}).get("received")


def parse(annotation: str, raw: str) -> Request:
    """A request, or InvalidRequest naming the annotation and what is wrong."""
    if annotation == ADAPT_REQUEST:
        try:
            body = json.loads(raw)
            if not isinstance(body, dict):
                raise ValueError("not a JSON object")
            strategy = body.get("strategy") or "auto"
            if strategy != "auto":
                check_strategy(strategy)
        except (ValueError, UnknownStrategy) as error:
            raise InvalidRequest(f"annotation {annotation} ignored: {error}") from None
        reason, drill = body.get("reason"), bool(body.get("drill"))
        return Request(annotation, raw, strategy=strategy, reason=reason, drill=drill)
    if annotation in (PROMOTE, ROLLBACK_TO):
        try:
            version = int(raw.strip())
            if version < 1:
                raise ValueError
        except ValueError:
            raise InvalidRequest(
                f"annotation {annotation}={raw!r} ignored: not a version number"
            ) from None
        return Request(annotation, raw, version=version)
    return Request(annotation, raw)


def pending(body: Mapping) -> tuple[list[Request], list[tuple[str, str, InvalidRequest]]]:
    """Requests not yet acknowledged in status, and the malformed ones (to reject)."""
    annotations = (body.get("metadata") or {}).get("annotations") or {}
    status = body.get("status") or {}
    found, bad = [], []
    for annotation in (ROLLBACK_TO, PROMOTE, ABORT, ADAPT_REQUEST):
        raw = annotations.get(annotation)
        if not raw or acknowledged(status, annotation) == raw:
            continue
        try:
            found.append(parse(annotation, raw))
        except InvalidRequest as error:
            bad.append((annotation, raw, error))
    return found, bad


def acknowledgement(annotation: str, raw: str, state: str, **extra: str | None) -> dict:
    """The status patch that marks a request handled."""
    ack = {"received": raw, "state": state} | {k: v for k, v in extra.items() if v is not None}
    if annotation == ADAPT_REQUEST:
        return {"adaptRequest": ack}
    return {"manualRequests": {CONTROL_KINDS[annotation]: ack}}
