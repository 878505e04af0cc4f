"""The fine-tuning wizard's steps as a state machine over plain data: no request, no session, no rendering.

The state is the dict the page keeps in the session (so JSON only): the step shown, the furthest step reached, what
was chosen so far (base model slug, datanet version ids, preset, Advanced settings, model name) and the idempotency
key its launch will use, so that a double click on Launch launches one job.

Steps, and what each needs from the posted data:
1. Base model: `base_model`, a slug that exists.
2. Data: `versions`, datanet version ids the user may train on.
3. Examples: nothing (a preview of how rows become training examples).
4. Settings: the PresetForm fields (preset, model name, Advanced hyperparameters).
5. Review: nothing; "launch" hands the state to the caller, which launches through services.finetune_launch
   (which checks everything again).

`submit` applies one posted step and moves "next" or "back". A step keeps what was entered either way, but only
"next" is blocked by a bad input: then the step stays, with the error to show (and, on step 4, the form with its
messages).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from modelfactory.forms import PresetForm
from modelfactory.training.presets import validate_hyperparameters

STEPS = ["Base model", "Data", "Examples", "Settings", "Review"]
BASE_MODEL, DATA, EXAMPLES, SETTINGS, REVIEW = 1, 2, 3, 4, 5

NO_BASE_MODEL = "Choose a base model to start from."
SETTINGS_NEED_A_CHANGE = "Some settings need a change: see the messages below."


def new_state(*, base_model: str) -> dict[str, Any]:
    """A fresh wizard on step 1, with `base_model` (the default's slug, or "") chosen and a new launch key."""
    return {
        "step": BASE_MODEL,
        "reached": BASE_MODEL,
        "base_model": base_model,
        "versions": [],
        "preset": "balanced",
        "advanced": {},
        "name": "",
        "key": uuid.uuid4().hex,
    }


def has_progress(state: dict[str, Any]) -> bool:
    """Whether starting over would lose something: a step past the first reached, or data chosen."""
    return state["reached"] > BASE_MODEL or bool(state["versions"]) or bool(state["name"]) or bool(state["advanced"])


def go_to(state: dict[str, Any], step: int) -> dict[str, Any]:
    """Back to a step already reached (the links in the step list); a step not reached yet gives the furthest."""
    return {**state, "step": max(BASE_MODEL, min(step, state["reached"]))}


def move(state: dict[str, Any], action: str) -> dict[str, Any]:
    """One step "back" or "next" (remembering the furthest step reached); any other action stays where it is."""
    if action == "back":
        return {**state, "step": max(BASE_MODEL, state["step"] - 1)}
    if action == "next":
        step = min(len(STEPS), state["step"] + 1)
        return {**state, "step": step, "reached": max(state["reached"], step)}
    return state


@dataclass(frozen=True)
class Submission:
    """One posted step: the button pressed ("next", "back", or "launch" on step 5) and the step's fields as
    posted (strings)."""

    action: str = "next"
    base_model: str = ""
    versions: Sequence[str] = ()
    settings: Mapping[str, Any] | None = None  # the PresetForm data of step 4


@dataclass(frozen=True)
class Lookups:
    """What checking a step asks of the database and the training hardware (the view binds them to the user;
    tests pass plain functions)."""

    base_model_exists: Callable[[str], bool]
    versions_problem: Callable[[list[int]], str | None]  # why these versions cannot be used; falsy when they can
    capabilities: Callable[[], Any]  # training.devices.Capabilities, what the settings form offers


@dataclass(frozen=True)
class Outcome:
    """The state after a submission, and what to show: an error (the step did not move), the settings form with
    its messages, or `launch` (step 5: launch with this state)."""

    state: dict[str, Any]
    error: str = ""
    form: PresetForm | None = None
    launch: bool = False


def submit(state: dict[str, Any], submission: Submission, *, lookups: Lookups) -> Outcome:
    """Applies one posted step to `state` (not changed itself) and moves as the action says."""
    state = dict(state)
    if state["step"] == REVIEW and submission.action == "launch":
        return Outcome(state, launch=True)
    check = STEP_CHECKS.get(state["step"])
    error, form = check(state, submission, lookups) if check else ("", None)
    if error:
        return Outcome(state, error=error, form=form)
    return Outcome(move(state, submission.action), form=form)


def _base_model_step(state: dict[str, Any], submission: Submission, lookups: Lookups) -> tuple[str, None]:
    if lookups.base_model_exists(submission.base_model):
        state["base_model"] = submission.base_model
    elif submission.action == "next":
        return NO_BASE_MODEL, None
    return "", None


def _data_step(state: dict[str, Any], submission: Submission, lookups: Lookups) -> tuple[str, None]:
    state["versions"] = [int(v) for v in submission.versions if v.isdigit()]
    if submission.action == "next":
        return lookups.versions_problem(state["versions"]) or "", None
    return "", None


def _settings_step(state: dict[str, Any], submission: Submission, lookups: Lookups) -> tuple[str, PresetForm | None]:
    """Keeps the preset, name and Advanced settings when the form is valid; the hyperparameter contract's own
    complaints (e.g. a combination out of range) go next to their fields."""
    form = PresetForm(submission.settings, capabilities=lookups.capabilities())
    if form.is_valid():
        state["preset"] = form.cleaned_data["preset"]
        state["name"] = form.cleaned_data["name"]
        state["advanced"] = form.hyperparameters()
        _, hp_errors = validate_hyperparameters(state["advanced"], preset=state["preset"])
        for field, message in hp_errors.items():
            form.add_error(f"hp_{field}" if f"hp_{field}" in form.fields else None, f"{field} {message}")
    if form.is_valid():
        return "", None
    return (SETTINGS_NEED_A_CHANGE if submission.action == "next" else ""), form


STEP_CHECKS: dict[int, Callable[[dict[str, Any], Submission, Lookups], tuple[str, PresetForm | None]]] = {
    BASE_MODEL: _base_model_step,
    DATA: _data_step,
    SETTINGS: _settings_step,
}
