"""The wizard's state machine alone (modelfactory.wizard_steps): each transition, and each bad input giving its error,
the step not moving and no job created. No request, no session: lookups are plain functions."""

import copy
import re

import pytest

from modelfactory import wizard_steps as W
from modelfactory.models import FineTuneJob
from modelfactory.training.devices import CPU_ONLY

NO_VERSION = "Choose at least one datanet version."


def lookups(*, base_models=("tiny-base",), usable=(7, 8), capabilities=None, seen=None):
    """Lookups over fixed data; `seen` (a list) records which were asked."""
    seen = [] if seen is None else seen

    def base_model_exists(slug):
        seen.append(("base_model_exists", slug))
        return slug in base_models

    def versions_problem(ids):
        seen.append(("versions_problem", ids))
        if not ids:
            return NO_VERSION
        return None if set(ids) <= set(usable) else "You cannot use one of these versions."

    def caps():
        seen.append(("capabilities",))
        return capabilities

    return W.Lookups(base_model_exists=base_model_exists, versions_problem=versions_problem, capabilities=caps)


def refusing_lookups():
    def refuse(*args):
        raise AssertionError("this step needs no lookup")

    return W.Lookups(base_model_exists=refuse, versions_problem=refuse, capabilities=refuse)


def at(step, reached=None, **fields):
    return {**W.new_state(base_model="tiny-base"), "step": step, "reached": reached or step, **fields}


def submit(state, lookups_=None, **posted):
    before = copy.deepcopy(state)
    outcome = W.submit(state, W.Submission(**posted), lookups=lookups_ or lookups())
    assert state == before  # the state passed in is never changed
    return outcome


# --- new state, links, moves -----------------------------------------------------------------------------------------


def test_new_state_starts_on_step_one_with_the_default_base_and_a_fresh_key():
    first, second = W.new_state(base_model="tiny-base"), W.new_state(base_model="")
    assert {k: v for k, v in first.items() if k != "key"} == {
        "step": 1,
        "reached": 1,
        "base_model": "tiny-base",
        "versions": [],
        "preset": "balanced",
        "advanced": {},
        "name": "",
    }
    assert second["base_model"] == ""
    assert re.fullmatch(r"[0-9a-f]{32}", first["key"]) and first["key"] != second["key"]
    assert W.STEPS == ["Base model", "Data", "Examples", "Settings", "Review"]


@pytest.mark.parametrize(("asked", "shown"), [(1, 1), (2, 2), (3, 3), (5, 3), (0, 1), (-4, 1)])
def test_go_to_reaches_only_steps_already_reached(asked, shown):
    state = at(4, reached=3)
    assert W.go_to(state, asked) == {**state, "step": shown}


@pytest.mark.parametrize(
    ("step", "reached", "action", "after"),
    [
        (1, 1, "next", (2, 2)),
        (2, 4, "next", (3, 4)),  # reached stays the furthest
        (4, 4, "next", (5, 5)),
        (5, 5, "next", (5, 5)),  # no step after the last
        (3, 3, "back", (2, 3)),  # back keeps how far the wizard got
        (1, 1, "back", (1, 1)),  # no step before the first
        (3, 3, "save", (3, 3)),  # any other action stays
    ],
)
def test_move(step, reached, action, after):
    state = at(step, reached=reached)
    moved = W.move(state, action)
    assert (moved["step"], moved["reached"]) == after
    assert {k: v for k, v in moved.items() if k not in ("step", "reached")} == {
        k: v for k, v in state.items() if k not in ("step", "reached")
    }


# --- step 1: base model ----------------------------------------------------------------------------------------------


def test_step_one_next_keeps_the_chosen_base_model_and_moves_on():
    outcome = submit(at(1, base_model=""), action="next", base_model="tiny-base")
    assert (outcome.error, outcome.form, outcome.launch) == ("", None, False)
    assert (outcome.state["step"], outcome.state["reached"], outcome.state["base_model"]) == (2, 2, "tiny-base")


@pytest.mark.django_db
def test_step_one_unknown_base_model_is_refused_and_nothing_changes():
    state = at(1, base_model="tiny-base")
    outcome = submit(state, action="next", base_model="nope")
    assert outcome.error == "Choose a base model to start from."
    assert outcome.state == state  # same step, the earlier choice kept
    assert FineTuneJob.objects.count() == 0


def test_step_one_back_with_an_unknown_base_model_is_no_error():
    state = at(1, base_model="tiny-base")
    outcome = submit(state, action="back", base_model="nope")
    assert (outcome.error, outcome.state) == ("", state)


# --- step 2: data ----------------------------------------------------------------------------------------------------


def test_step_two_next_keeps_the_versions_and_moves_on():
    seen = []
    outcome = submit(at(2), lookups(seen=seen), action="next", versions=["7", "8"])
    assert (outcome.error, outcome.state["step"], outcome.state["versions"]) == ("", 3, [7, 8])
    assert seen == [("versions_problem", [7, 8])]


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("posted", "kept", "error"),
    [
        ([], [], NO_VERSION),
        (["x", "-1", ""], [], NO_VERSION),  # only whole numbers count as ids
        (["7", "99"], [7, 99], "You cannot use one of these versions."),
    ],
)
def test_step_two_bad_versions_are_refused_and_the_step_stays(posted, kept, error):
    outcome = submit(at(2), action="next", versions=posted)
    assert outcome.error == error
    assert (outcome.state["step"], outcome.state["reached"], outcome.state["versions"]) == (2, 2, kept)
    assert FineTuneJob.objects.count() == 0


def test_step_two_back_keeps_the_versions_unchecked():
    seen = []
    outcome = submit(at(2), lookups(seen=seen), action="back", versions=["99"])
    assert (outcome.error, outcome.state["step"], outcome.state["versions"]) == ("", 1, [99])
    assert seen == []


# --- step 3: examples (nothing to enter) -----------------------------------------------------------------------------


@pytest.mark.parametrize(("action", "step"), [("next", 4), ("back", 2)])
def test_step_three_only_moves(action, step):
    outcome = submit(at(3), refusing_lookups(), action=action)
    assert (outcome.error, outcome.form, outcome.state["step"]) == ("", None, step)


# --- step 4: settings ------------------------------------------------------------------------------------------------


def test_step_four_next_keeps_preset_name_and_advanced_settings():
    posted = {"preset": "quick", "name": "Wizard model", "hp_max_length": "192", "hp_epochs": "2"}
    outcome = submit(at(4), action="next", settings=posted)
    assert (outcome.error, outcome.form, outcome.state["step"]) == ("", None, 5)
    assert (outcome.state["preset"], outcome.state["name"]) == ("quick", "Wizard model")
    assert outcome.state["advanced"] == {"max_length": 192, "epochs": 2}


@pytest.mark.django_db
def test_step_four_out_of_range_setting_is_refused_next_to_its_field():
    state = at(4)
    outcome = submit(state, action="next", settings={"preset": "quick", "hp_rank": "999"})
    assert outcome.error == "Some settings need a change: see the messages below."
    assert outcome.form.errors["hp_rank"] == ["Ensure this value is less than or equal to 256."]
    assert outcome.state == state
    assert FineTuneJob.objects.count() == 0


@pytest.mark.django_db
def test_step_four_refuses_4bit_on_hardware_that_cannot_run_it():
    seen = []
    posted = {"preset": "quick", "hp_quantization": "4bit"}
    outcome = submit(at(4), lookups(capabilities=CPU_ONLY, seen=seen), action="next", settings=posted)
    assert outcome.error == "Some settings need a change: see the messages below."
    assert "4-bit" in outcome.form.errors["hp_quantization"][0]
    assert outcome.state["step"] == 4 and seen == [("capabilities",)]
    assert FineTuneJob.objects.count() == 0


def test_step_four_puts_the_contracts_complaints_next_to_their_fields(monkeypatch):
    def contract(values, *, preset):
        return {}, {"rank": "must be even", "mystery": "is not a setting we know"}

    monkeypatch.setattr(W, "validate_hyperparameters", contract)
    outcome = submit(at(4), action="next", settings={"preset": "quick", "hp_rank": "9"})
    assert outcome.error == "Some settings need a change: see the messages below."
    assert outcome.form.errors["hp_rank"] == ["rank must be even"]
    assert outcome.form.non_field_errors() == ["mystery is not a setting we know"]
    assert outcome.state["step"] == 4
    # what the form accepted is kept, so that going back and forth shows it again
    assert (outcome.state["preset"], outcome.state["advanced"]) == ("quick", {"rank": 9})


def test_step_four_back_keeps_what_was_entered_even_when_invalid():
    outcome = submit(at(4), action="back", settings={"preset": "thorough", "name": "Kept", "hp_rank": "12"})
    assert (outcome.error, outcome.form, outcome.state["step"], outcome.state["reached"]) == ("", None, 3, 4)
    assert (outcome.state["preset"], outcome.state["name"], outcome.state["advanced"]) == (
        "thorough",
        "Kept",
        {"rank": 12},
    )

    invalid = submit(at(4), action="back", settings={"preset": "quick", "hp_rank": "999"})
    assert (invalid.error, invalid.state["step"]) == ("", 3)
    assert invalid.form.errors["hp_rank"]  # shown again if the user comes back to it


def test_step_four_unknown_preset_is_refused():
    outcome = submit(at(4), action="next", settings={"preset": "extreme"})
    assert outcome.error == "Some settings need a change: see the messages below."
    assert "preset" in outcome.form.errors
    assert outcome.state["preset"] == "balanced"


# --- step 5: review --------------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_step_five_launch_hands_the_state_over_and_creates_nothing_itself():
    state = at(5, versions=[7], preset="quick")
    outcome = submit(state, refusing_lookups(), action="launch")
    assert (outcome.launch, outcome.error, outcome.state) == (True, "", state)
    assert FineTuneJob.objects.count() == 0


def test_launch_before_the_review_step_is_not_a_launch():
    outcome = submit(at(3), refusing_lookups(), action="launch")
    assert (outcome.launch, outcome.state["step"]) == (False, 3)


def test_step_five_back_goes_to_the_settings():
    outcome = submit(at(5), refusing_lookups(), action="back")
    assert (outcome.launch, outcome.state["step"], outcome.state["reached"]) == (False, 4, 5)
