"""The lifecycle: one literal transition table and one function that applies it.

Rows are ``(kind, state, event) -> new state``. Every transition is written
together with its event row, in the caller's transaction, by ``transition``.

Three additions to the table in DESIGN.md, recorded in docs/architecture.md:
a ``failed`` run can be discarded (to delete its partial files) or resumed
from its last checkpoint (``llora train --resume``), and a ``retired``
modifier or router can be discarded (as a retired base can).
"""

from __future__ import annotations

from sqlmodel import Session

from llora_store.errors import InvalidTransition
from llora_store.models import Artifact, Event, utcnow, with_article

_TRAINED = {
    ("training", "finish"): "trained",
    ("training", "fail"): "failed",
    ("failed", "resume"): "training",
    ("failed", "discard"): "discarded",
}
_SERVED = {
    ("ready", "deploy"): "deployed",
    ("deployed", "retire"): "retired",
    ("retired", "deploy"): "deployed",
    ("ready", "discard"): "discarded",
    ("retired", "discard"): "discarded",
}
_RUNTIME = {
    **_TRAINED,
    ("trained", "deploy"): "deployed",
    ("deployed", "retire"): "retired",
    ("retired", "deploy"): "deployed",
    ("trained", "discard"): "discarded",
    ("retired", "discard"): "discarded",
}

TRANSITIONS: dict[str, dict[tuple[str, str], str]] = {
    "adapter": {
        **_TRAINED,
        ("trained", "merge"): "merged",
        ("merged", "discard"): "discarded",
        ("trained", "discard"): "discarded",
    },
    "modifier": dict(_RUNTIME),
    "router": dict(_RUNTIME),
    "base": dict(_SERVED),
    "merged": dict(_SERVED),
    "compressed": dict(_SERVED),
    "dataset": {("ready", "discard"): "discarded"},
    # A scenario set (`llora router collect`): measured outcomes a router is fitted on; data, like a dataset.
    "scenario-set": {("ready", "discard"): "discarded"},
    # A layer-adapter set (`llora router distill`): one small adapter per decoder layer of one base (dynamic depth).
    "layer-adapters": {("ready", "discard"): "discarded"},
}

# The states an artifact may be created in. An adapter imported from a PEFT
# directory is created already ``trained``.
INITIAL: dict[str, tuple[str, ...]] = {
    "adapter": ("training", "trained"),
    "modifier": ("training", "trained"),
    "router": ("training", "trained"),
    "base": ("ready",),
    "merged": ("ready",),
    "compressed": ("ready",),
    "dataset": ("ready",),
    "scenario-set": ("ready",),
    "layer-adapters": ("ready",),
}

EVENTS = tuple(sorted({event for table in TRANSITIONS.values() for (_, event) in table}))


def states(kind: str) -> tuple[str, ...]:
    """Every state an artifact of ``kind`` can be in, in table order."""
    seen: dict[str, None] = {s: None for s in INITIAL[kind]}
    for (state, _), new in TRANSITIONS[kind].items():
        seen.setdefault(state, None)
        seen.setdefault(new, None)
    return tuple(seen)


def allowed_events(kind: str, state: str) -> list[str]:
    return sorted(event for (s, event) in TRANSITIONS[kind] if s == state)


def next_state(kind: str, state: str, event: str) -> str:
    """The state ``event`` leads to, or InvalidTransition naming the allowed events."""
    try:
        return TRANSITIONS[kind][(state, event)]
    except KeyError:
        allowed = allowed_events(kind, state)
        shown = ", ".join(allowed) if allowed else "none (final state)"
        raise InvalidTransition(
            f"cannot {event} {with_article(kind)} in state '{state}'; allowed from '{state}': {shown}",
            allowed=allowed,
        ) from None


def transition(
    session: Session, artifact: Artifact, event: str, *, command: str = "", reason: str = ""
) -> Event:
    """Move ``artifact`` along ``event`` and add the event row to the same session.

    The caller commits: state and event land in one transaction or not at all.
    """
    new = next_state(artifact.kind, artifact.state, event)
    row = Event(
        artifact_id=artifact.id,
        event=event,
        from_state=artifact.state,
        to_state=new,
        command=command[:256],
        reason=reason[:1024],
    )
    artifact.state = new
    artifact.updated_at = utcnow()
    session.add(artifact)
    session.add(row)
    return row
