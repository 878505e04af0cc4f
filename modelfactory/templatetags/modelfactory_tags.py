"""Template filters of the fine-tuning pages."""

from django import template

from modelfactory.training.presets import PRESETS

register = template.Library()


@register.filter
def duration(seconds) -> str:
    """45 -> "45 s", 250 -> "4 min", 4000 -> "1 h 7 min"; "" for no value."""
    if seconds in (None, ""):
        return ""
    seconds = max(0, round(float(seconds)))
    if seconds < 90:
        return f"{seconds} s"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60} min"


@register.filter
def preset_label(key: str) -> str:
    """The preset's name as the wizard shows it ("Learns your facts (recommended)"); the key for an unknown one."""
    preset = PRESETS.get(key)
    return preset.label if preset else key
