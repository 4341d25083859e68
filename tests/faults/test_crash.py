"""R10 under SIGKILL: each lifecycle command killed at seeded random moments on a tiny model, then the home checked
(tests/faults/harness.py: files and hashes of usable artifacts, event chains, lineage, the command's target in its
before or after state, `llora doctor` reporting exactly the debris, `llora db gc` repairing it and nothing else).

A few trials per command here (~3 min in all on 2 cores); scripts/crash_trials.py runs 30+ per command and
docs/reliability.md has its figures."""

from __future__ import annotations

import pytest
from faults import harness

# kills per command here: the commands that load torch take 10-17 s a run on 2 cores, the catalog ones ~1 s
TRIALS = {"train": 2, "merge": 2, "compress": 2, "deploy": 3, "retire": 3, "discard": 3, "export": 3, "import": 3}
SEED = 16

pytestmark = pytest.mark.faults


@pytest.fixture(scope="module")
def template(tiny_model_dir, tiny_adapter_dir, tmp_path_factory):
    return harness.build_template(tmp_path_factory.mktemp("crash"), tiny_model_dir, tiny_adapter_dir)


@pytest.mark.parametrize("command", harness.COMMANDS)
def test_command_killed_at_random_moments_leaves_a_consistent_home(template, command, tmp_path):
    duration, trials = harness.run_command_trials(template, command, TRIALS[command], SEED, tmp_path)
    assert len(trials) == TRIALS[command] + 1 and not trials[0].killed and trials[0].returncode == 0
    assert [t.violations for t in trials] == [[]] * len(trials), [t.to_json() for t in trials if t.violations]
    after = {"deploy": "target deployed", "retire": "target retired", "discard": "target discarded",
             "export": "export complete", "train": "target trained", "import": "target trained"}
    assert trials[0].point == "done: " + after.get(command, "target ready")


def test_delays_are_seeded_and_cover_the_whole_run():
    d = harness.delays(16, "merge", 30, 10.0)
    assert d == harness.delays(16, "merge", 30, 10.0) and d != harness.delays(17, "merge", 30, 10.0)
    assert sorted(int(x // (11.0 / 30)) for x in d) == list(range(30))  # one kill in each thirtieth of 1.1 x the run


def test_checks_catch_a_partial_file_and_a_state_change_without_its_event(template, tmp_path):
    """The checks can fail: a usable artifact with a cut file, and a state written without its event row."""
    import sqlite3

    home = harness.new_home(template, tmp_path / "damaged", "deploy")
    snap = harness.snapshot(home)
    ad = snap.by_name("ad")
    path = home / "artifacts" / ad["id"] / "adapter_model.safetensors"
    path.write_bytes(path.read_bytes()[:100])
    con = sqlite3.connect(home / "catalog.db")
    con.execute("UPDATE artifact SET state = 'deployed' WHERE name = 'tiny'")
    con.commit()
    con.close()
    found = harness.catalog_violations(home, harness.snapshot(home))
    assert sorted(found) == [f"adapter 'ad' ({ad['id']}, trained): usable but adapter_model.safetensors differs from its "
                     "record (partial or changed)",
                     f"base 'tiny' ({snap.by_name('tiny')['id']}, deployed): its last event left it 'ready' "
                     "(a state change without its event row)"]
