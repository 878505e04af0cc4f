import pytest

from modelfactory.training.estimate import teaching_warnings
from modelfactory.training.presets import HYPERPARAMETERS, PRESETS, preset_values, validate_hyperparameters
from modelfactory.training.schedule import plan_passes, plan_steps


def test_every_field_has_help_and_a_valid_default():
    for key, param in HYPERPARAMETERS.items():
        assert param.help and param.label, key
        clean, errors = validate_hyperparameters({key: param.default})
        assert errors == {}, key
        assert clean[key] == param.default


def test_presets_fill_every_field_and_differ():
    for name, preset in PRESETS.items():
        values = preset_values(name)
        assert set(values) == set(HYPERPARAMETERS)
        assert values["alpha"] == 2 * values["rank"]
        assert 0.05 <= values["eval_split"] <= 0.1
        assert preset.why and preset.purpose
        assert not any(ch.isdigit() for ch in preset.purpose), name  # the numbers live behind "Advanced"
    assert [preset_values(n)["min_steps"] for n in ("quick", "balanced", "thorough")] == [30, 80, 160]
    assert [preset_values(n)["target_modules"] for n in ("quick", "balanced", "thorough")] == [
        "attention", "all_linear", "all_linear"
    ]  # fmt: skip


def test_a_small_datanet_gets_the_minimum_of_learning_steps():
    hp = preset_values("balanced")  # batch 4, accumulation 1, at least 3 passes and 80 steps
    assert plan_passes(54, hp) == (14, 6)  # 14 steps a pass: 6 passes reach 84 >= 80 steps
    assert plan_steps(54, hp) == (14, 84)
    assert plan_passes(1000, hp) == (250, 3)  # a big datanet keeps its 3 passes
    assert plan_passes(1, hp) == (1, 50)  # never more than 50 passes
    assert plan_passes(54, {**hp, "min_steps": 0}) == (14, 3)


def test_the_old_defaults_draw_a_warning_and_the_new_ones_do_not():
    old = {**preset_values("balanced"), "min_steps": 0, "epochs": 2, "batch_size": 8, "grad_accum": 2,
           "learning_rate": 2e-4}  # fmt: skip
    assert teaching_warnings(28, 2, old) == [
        "Only 4 learning steps are planned: too few for the model to learn your facts. Choose \u201cLearns your "
        "facts\u201d, or raise the epochs or the minimum of learning steps (Advanced settings) to 30 or more."
    ]
    assert teaching_warnings(28, 2, preset_values("balanced")) == []
    slow = {**preset_values("balanced"), "learning_rate": 1e-5}
    assert teaching_warnings(28, 2, slow) == [
        "The learning rate (1e-05) is too low for 84 steps: the model will barely change. Raise it or train for "
        "more steps."
    ]
    assert teaching_warnings(5, 0, preset_values("balanced")) == [
        "Only 5 rows to train on: add more rows, each fact said a few different ways, for the model to learn it.",
        "No row is held out, so the result cannot be checked: raise the held-out share or add rows.",
    ]


def test_overrides_are_cleaned_and_typed():
    clean, errors = validate_hyperparameters(
        {"rank": "8", "learning_rate": "0.0001", "target_modules": "q_proj, v_proj", "epochs": 3.0, "dropout": None},
        preset="quick",
    )
    assert errors == {}
    assert (clean["rank"], clean["learning_rate"], clean["epochs"]) == (8, 0.0001, 3)
    assert clean["target_modules"] == ["q_proj", "v_proj"]
    assert clean["dropout"] == preset_values("quick")["dropout"]


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("rank", 0, "must be between 1 and 256"),
        ("rank", 2.5, "must be a whole number between 1 and 256"),
        ("rank", True, "must be a whole number between 1 and 256"),
        ("alpha", 1000, "must be between 1 and 512"),
        ("dropout", 0.9, "must be between 0 and 0.5"),
        ("learning_rate", 1.0, "must be between 1e-06 and 0.01"),
        ("learning_rate", "fast", "must be a number between 1e-06 and 0.01"),
        ("learning_rate", float("nan"), "must be between 1e-06 and 0.01"),
        ("epochs", 21, "must be between 1 and 20"),
        ("batch_size", -1, "must be between 1 and 256"),
        ("grad_accum", 0, "must be between 1 and 128"),
        ("max_length", 16, "must be between 32 and 32768"),
        ("scheduler", "step", "must be one of: cosine, linear, constant"),
        ("warmup_ratio", 0.7, "must be between 0 and 0.5"),
        ("seed", -3, "must be between 0 and 2147483647"),
        ("eval_split", 0.6, "must be between 0 and 0.5"),
        ("quantization", "8bit", "must be one of: none, 4bit"),
        (
            "target_modules",
            ["q_proj", "bad name!"],
            "must be attention or all_linear, or a list of layer names such as q_proj, v_proj",
        ),
        ("target_modules", [], "must be attention or all_linear, or a list of layer names such as q_proj, v_proj"),
        ("colour", "red", "is not a setting we know"),
    ],
)
def test_each_bad_field_says_its_allowed_range(field, value, message):
    clean, errors = validate_hyperparameters({field: value, "rank": 8} if field != "rank" else {field: value})
    assert errors == {field: message}


def test_unknown_preset():
    assert validate_hyperparameters({}, preset="turbo") == (
        {},
        {"preset": "Unknown preset 'turbo': choose one of quick, balanced, thorough"},
    )
