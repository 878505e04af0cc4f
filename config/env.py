"""Typed readers for environment variables that fail loudly, naming the variable.

Plain Python (no Django import) so that settings.py can use it before Django is configured.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlparse


class EnvError(Exception):
    """A variable has a value the application cannot run with."""

    def __init__(self, name: str, value: str, expected: str) -> None:
        self.name = name
        super().__init__(f"Environment variable {name}={value!r} is not valid: expected {expected}.")


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def load_dotenv(path) -> None:
    """Reads KEY=VALUE lines from a .env file into os.environ; variables already set win."""
    try:
        with open(path, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except FileNotFoundError:
        return
    for number, line in enumerate(lines, start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.strip().isidentifier():
            raise EnvError(f"{path} line {number}", line, "KEY=VALUE")
        os.environ.setdefault(key.strip(), value.strip().strip('"').strip("'"))


class Env:
    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self.environ = os.environ if environ is None else environ

    def _raw(self, name: str) -> str | None:
        value = self.environ.get(name)
        if value is None or value.strip() == "":
            return None
        return value.strip()

    def str(self, name: str, default: str) -> str:
        value = self._raw(name)
        return default if value is None else value

    def bool(self, name: str, default: bool) -> bool:
        value = self._raw(name)
        if value is None:
            return default
        if value.lower() in _TRUE:
            return True
        if value.lower() in _FALSE:
            return False
        raise EnvError(name, value, "one of true/false, 1/0, yes/no, on/off")

    def int(self, name: str, default: int, *, min_value: int | None = None, max_value: int | None = None) -> int:
        value = self._raw(name)
        if value is None:
            return default
        try:
            number = int(value)
        except ValueError:
            raise EnvError(name, value, "a whole number") from None
        if (min_value is not None and number < min_value) or (max_value is not None and number > max_value):
            low = "-inf" if min_value is None else min_value
            high = "inf" if max_value is None else max_value
            raise EnvError(name, value, f"a whole number between {low} and {high}")
        return number

    def float(self, name: str, default: float, *, min_value: float, max_value: float) -> float:
        value = self._raw(name)
        if value is None:
            return default
        try:
            number = float(value)
        except ValueError:
            raise EnvError(name, value, "a number") from None
        if not min_value <= number <= max_value:
            raise EnvError(name, value, f"a number between {min_value} and {max_value}")
        return number

    def list(self, name: str, default: list[str]) -> list[str]:
        value = self._raw(name)
        if value is None:
            return list(default)
        return [item.strip() for item in value.split(",") if item.strip()]

    def url(self, name: str, default: str, *, schemes: set[str]) -> str:
        value = self._raw(name)
        if value is None:
            return default
        scheme = urlparse(value).scheme
        if scheme not in schemes:
            raise EnvError(name, value, "a URL starting with " + " or ".join(sorted(f"{s}://" for s in schemes)))
        return value


def embedded_secret_key(path) -> str:
    """The secret key of an installation that sets none: generated once, kept in `path` (readable by its owner only)
    and read back by every later process. Two processes starting at once agree: the file appears whole or not at
    all (written aside, then linked into place), and the loser reads the winner's key."""
    path = Path(path)
    try:
        key = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        key = ""
    if len(key) >= 50:
        return key
    path.parent.mkdir(parents=True, exist_ok=True)
    aside = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    aside.write_text(secrets.token_urlsafe(50) + "\n", encoding="utf-8")
    aside.chmod(0o600)
    try:
        os.link(aside, path)
    except FileExistsError:
        pass
    finally:
        aside.unlink()
    return path.read_text(encoding="utf-8").strip()
