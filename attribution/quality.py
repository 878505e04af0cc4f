"""How well attribution works, as the product's own benches measured it: attribution/quality.json.

Written only by the benches (`--record` on bench/bench_attribution.py and bench/bench_attribution_planted.py), read
by the model pages and the API (attribution.selectors.model_quality). Never edit the file by hand: a figure on a
model's page must be one a bench printed. Plain JSON and the standard library: no Django, no torch (the benches and
the web process both import it).

The file, keyed by the method version an index and its answers record (ModelIndex.method_version,
Attribution.method_version, e.g. "poa-3"):

    {"poa-3": {"measurements": [
        {"metric": "planted_fact_top1", "value": 0.95, "bench_model": "tiny", "date": "2026-12-06",
         "bench": "bench/bench_attribution.py", "command": "python bench/bench_attribution.py --record",
         "counts": {"queries": 20}, "details": {"recall": 1.0, "score_method": "fisher"}},
        ...]}}

A run replaces, under its method version, the measurements of the same metric on the same bench model, and keeps
every other entry (other metrics, other bench models, other method versions).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import re
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

QUALITY_FILE = Path(__file__).resolve().parent / "quality.json"

# metric -> (lowest, highest) value it can take
METRICS = {
    "planted_fact_top1": (0.0, 1.0),  # share of planted-fact questions whose largest share went to the fact's owner
    "lds": (-1.0, 1.0),  # linear datamodeling score (mean Spearman over queries)
    "unattributed_in_domain": (0.0, 1.0),  # mean unattributed share of answers to the data's own questions
    "unattributed_out_of_domain": (0.0, 1.0),  # mean unattributed share of answers about nothing in the data
}
TINY = "tiny"  # bench_model of the tiny test model (attribution/engine/validation.py); others are model names
_METHOD_VERSION = re.compile(r"^[a-z0-9][a-z0-9.-]{0,19}$")  # as Attribution.method_version holds it (20 chars)
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


class QualityFileError(ValueError):
    """A measurement or the quality file is not what the format above says; nothing was written."""


@dataclass(frozen=True)
class Measurement:
    metric: str
    value: float
    bench_model: str  # TINY or the base model's name, e.g. "SmolLM2-135M-Instruct"
    date: str  # ISO date (UTC) of the run
    bench: str  # the bench script, e.g. "bench/bench_attribution.py"
    command: str  # the command line that produced it
    counts: dict[str, int] = field(default_factory=dict)  # e.g. {"queries": 20}, {"subsets": 32, "queries": 16}
    details: dict[str, float | int | str] = field(default_factory=dict)  # e.g. {"recall": 1.0}

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise QualityFileError(f"unknown metric {self.metric!r}: one of {', '.join(METRICS)}")
        low, high = METRICS[self.metric]
        if isinstance(self.value, bool) or not isinstance(self.value, int | float) or not math.isfinite(self.value):
            raise QualityFileError(f"{self.metric}: the value must be a finite number, not {self.value!r}")
        if not low <= self.value <= high:
            raise QualityFileError(f"{self.metric}: the value {self.value} is outside {low}..{high}")
        for name in ("bench_model", "bench", "command"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise QualityFileError(f"{self.metric}: {name} must be a non-empty string")
        if not isinstance(self.date, str) or not _DATE.match(self.date):
            raise QualityFileError(f"{self.metric}: the date must be YYYY-MM-DD, not {self.date!r}")
        dt.date.fromisoformat(self.date)  # a real day (raises ValueError otherwise)
        if not isinstance(self.counts, dict) or not all(
            isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) and v > 0
            for k, v in self.counts.items()
        ):
            raise QualityFileError(f"{self.metric}: counts must map names to positive whole numbers")
        if not isinstance(self.details, dict) or not all(isinstance(k, str) for k in self.details):
            raise QualityFileError(f"{self.metric}: details must be a mapping of names")


def quality_read(path: Path | None = None) -> dict[str, list[Measurement]]:
    """{method version: [Measurement]} as recorded; {} when no bench has recorded anything yet."""
    path = Path(path or QUALITY_FILE)
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise QualityFileError(f"{path}: not readable JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise QualityFileError(f"{path}: expected an object keyed by method version")
    out: dict[str, list[Measurement]] = {}
    for version, entry in data.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("measurements"), list):
            raise QualityFileError(f"{path}: {version!r} has no list of measurements")
        try:
            out[version] = [Measurement(**m) for m in entry["measurements"]]
        except TypeError as exc:
            raise QualityFileError(f"{path}: {version!r} holds a malformed measurement ({exc})") from exc
    return out


def quality_record(*, method_version: str, measurements: list[Measurement], path: Path | None = None) -> dict:
    """Merges one bench run's measurements into the file (atomically: the whole new file or the old one) and
    returns what the file now holds, as JSON data. Raises QualityFileError, writing nothing, on a bad method version,
    an empty run, the same metric twice for one bench model in the run, or an unreadable file."""
    if not isinstance(method_version, str) or not _METHOD_VERSION.match(method_version):
        raise QualityFileError(f"method version {method_version!r}: expected a short name such as 'poa-3'")
    if not measurements:
        raise QualityFileError("nothing to record: the run measured no figure")
    if not all(isinstance(m, Measurement) for m in measurements):
        raise QualityFileError("measurements must be Measurement objects")
    keys = [(m.metric, m.bench_model) for m in measurements]
    if len(set(keys)) != len(keys):
        raise QualityFileError("the run lists the same metric twice for one bench model")
    path = Path(path or QUALITY_FILE)
    current = quality_read(path)
    kept = [m for m in current.get(method_version, []) if (m.metric, m.bench_model) not in set(keys)]
    current[method_version] = sorted(kept + list(measurements), key=lambda m: (m.metric, m.bench_model))
    data = {version: {"measurements": [asdict(m) for m in ms]} for version, ms in sorted(current.items())}
    text = json.dumps(data, indent=2, sort_keys=False) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=".quality-", suffix=".json", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return data


def today() -> str:
    """The run's date as measurements record it (UTC)."""
    return dt.datetime.now(dt.UTC).date().isoformat()
