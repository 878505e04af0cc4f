import os
import subprocess
import sys
from pathlib import Path

import pytest

from config.env import Env, EnvError, load_dotenv

ROOT = Path(__file__).resolve().parent.parent


def test_bool_accepts_the_usual_spellings():
    env = Env({"A": "yes", "B": "0", "C": " TRUE "})
    assert env.bool("A", False) is True
    assert env.bool("B", True) is False
    assert env.bool("C", False) is True
    assert env.bool("MISSING", True) is True


def test_bool_rejects_other_values_naming_the_variable():
    with pytest.raises(EnvError) as err:
        Env({"DJANGO_DEBUG": "maybe"}).bool("DJANGO_DEBUG", True)
    assert err.value.name == "DJANGO_DEBUG"
    assert "DJANGO_DEBUG='maybe'" in str(err.value)


def test_int_range_and_type():
    env = Env({"N": "12", "BAD": "twelve", "BIG": "99"})
    assert env.int("N", 1, min_value=1, max_value=20) == 12
    assert env.int("EMPTY", 7) == 7
    with pytest.raises(EnvError, match="BAD='twelve' is not valid: expected a whole number"):
        env.int("BAD", 1)
    with pytest.raises(EnvError, match="BIG='99' is not valid: expected a whole number between 1 and 20"):
        env.int("BIG", 1, min_value=1, max_value=20)


def test_float_range_and_type():
    env = Env({"F": "0.3", "BAD": "half", "BIG": "1.5"})
    assert env.float("F", 0.5, min_value=0.05, max_value=0.95) == 0.3
    assert env.float("MISSING", 0.5, min_value=0.05, max_value=0.95) == 0.5
    with pytest.raises(EnvError, match="BAD='half' is not valid: expected a number"):
        env.float("BAD", 0.5, min_value=0.05, max_value=0.95)
    with pytest.raises(EnvError, match="BIG='1.5' is not valid: expected a number between 0.05 and 0.95"):
        env.float("BIG", 0.5, min_value=0.05, max_value=0.95)


def test_list_and_blank_values_use_the_default():
    env = Env({"HOSTS": "a.example, b.example,,", "BLANK": "   "})
    assert env.list("HOSTS", []) == ["a.example", "b.example"]
    assert env.str("BLANK", "fallback") == "fallback"


def test_url_scheme_is_checked():
    env = Env({"DATABASE_URL": "mysql://x/y", "OK": "postgres://u@h/db"})
    assert env.url("OK", "", schemes={"postgres"}) == "postgres://u@h/db"
    with pytest.raises(EnvError, match="DATABASE_URL='mysql://x/y' is not valid: expected a URL starting with"):
        env.url("DATABASE_URL", "", schemes={"postgres", "sqlite"})


def test_dotenv_fills_only_missing_variables(tmp_path, monkeypatch):
    monkeypatch.setenv("MF_KEEP", "from-env")
    monkeypatch.delenv("MF_NEW", raising=False)
    dotenv = tmp_path / ".env"
    dotenv.write_text("# comment\nMF_KEEP=from-file\nMF_NEW='hello'\n\n")
    load_dotenv(dotenv)
    assert os.environ["MF_KEEP"] == "from-env"
    assert os.environ["MF_NEW"] == "hello"
    monkeypatch.delenv("MF_NEW")


def test_dotenv_with_a_bad_line_names_the_line(tmp_path):
    dotenv = tmp_path / ".env"
    dotenv.write_text("GOOD=1\nthis is not a setting\n")
    with pytest.raises(EnvError, match=r"line 2"):
        load_dotenv(dotenv)


def _manage(args, **env):
    base = {
        k: v for k, v in os.environ.items() if k not in ("DJANGO_DEBUG", "DJANGO_SECRET_KEY", "DJANGO_ALLOWED_HOSTS")
    }
    base.update(env)
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=base, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"DJANGO_DEBUG": "perhaps"}, "DJANGO_DEBUG"),
        ({"DATABASE_URL": "mongodb://localhost/x"}, "DATABASE_URL"),
        ({"CELERY_BROKER_URL": "kafka://localhost"}, "CELERY_BROKER_URL"),
        ({"MF_UPLOAD_MAX_BYTES": "lots"}, "MF_UPLOAD_MAX_BYTES"),
        ({"DJANGO_SECRET_KEY": "too-short"}, "DJANGO_SECRET_KEY"),
        ({"DJANGO_DEBUG": "false", "DJANGO_SECRET_KEY": "x" * 40}, "DJANGO_ALLOWED_HOSTS"),
    ],
)
def test_process_refuses_to_start_naming_the_variable(env, variable):
    result = _manage(["check"], **env)
    assert result.returncode == 2
    assert result.stderr.startswith(f"Configuration error: Environment variable {variable}")
    assert "Traceback" not in result.stderr


def test_production_values_start():
    result = _manage(
        ["check"], DJANGO_DEBUG="false", DJANGO_SECRET_KEY="s" * 50, DJANGO_ALLOWED_HOSTS="models.example.org"
    )
    assert result.returncode == 0, result.stderr
    assert "System check identified no issues" in result.stdout
