"""The transition table: every (kind, state, event) pair is either allowed or refused by name."""

from __future__ import annotations

import pytest
from sqlmodel import select

from llora_store import InvalidTransition
from llora_store import lifecycle as lc
from llora_store.models import KINDS, Artifact, Event

PAIRS = [(kind, state, event) for kind in KINDS for state in lc.states(kind) for event in lc.EVENTS]


def test_table_matches_design_states():
    assert set(lc.states("adapter")) == {"training", "trained", "failed", "merged", "discarded"}
    assert set(lc.states("modifier")) == {"training", "trained", "failed", "deployed", "retired", "discarded"}
    assert set(lc.states("base")) == {"ready", "deployed", "retired", "discarded"}
    assert lc.states("dataset") == ("ready", "discarded")
    assert lc.TRANSITIONS["adapter"][("trained", "merge")] == "merged"
    assert ("trained", "deploy") not in lc.TRANSITIONS["adapter"]  # R5 at the table level too


@pytest.mark.parametrize("kind,state,event", PAIRS, ids=[f"{k}-{s}-{e}" for k, s, e in PAIRS])
def test_every_state_event_pair(store, kind, state, event):
    with store.writing() as s:
        art = Artifact(id=f"{kind[:3]}{state[:3]}{event[:3]}", kind=kind, name=f"a-{kind}-{state}-{event}", state=state, meta={})
        s.add(art)
    expected = lc.TRANSITIONS[kind].get((state, event))
    if expected is not None:
        with store.writing() as s:
            art = s.get(Artifact, art.id)
            ev = lc.transition(s, art, event, command="test", reason="r")
        assert store.get(art.id).state == expected
        assert (ev.from_state, ev.to_state, ev.event) == (state, expected, event)
        with store.reading() as s:
            rows = s.execute(select(Event).where(Event.artifact_id == art.id)).scalars().all()
        assert [(r.event, r.from_state, r.to_state, r.command) for r in rows] == [(event, state, expected, "test")]
    else:
        with store.writing() as s:
            art = s.get(Artifact, art.id)
            with pytest.raises(InvalidTransition) as exc:
                lc.transition(s, art, event)
        assert exc.value.allowed == lc.allowed_events(kind, state)
        for allowed in exc.value.allowed:
            assert allowed in exc.value.message
        assert store.get(art.id).state == state


def test_state_and_event_commit_together(store):
    """A transaction that fails after the transition leaves neither the new state nor the event."""
    art = store.create("base", "b")
    with pytest.raises(RuntimeError):
        with store.writing() as s:
            row = s.get(Artifact, art.id)
            lc.transition(s, row, "deploy")
            raise RuntimeError("crash before commit")
    assert store.get(art.id).state == "ready"
    assert [e.event for e in store.history(art.id)] == ["create"]


def test_events_are_append_only_in_the_database(store):
    from sqlalchemy import text
    from sqlalchemy.exc import DatabaseError

    store.create("base", "b")
    with pytest.raises(DatabaseError, match="append-only"):
        with store.writing() as s:
            s.execute(text("UPDATE event SET reason = 'rewritten'"))
    with pytest.raises(DatabaseError, match="append-only"):
        with store.writing() as s:
            s.execute(text("DELETE FROM event"))
    assert len(store.history("b")) == 1
