"""`celery -A modelfactory worker` (the command of earlier READMEs and deployments) keeps working: Celery finds the
app as this submodule's `app`. The app itself lives in config/celery.py; `celery -A config` is the documented form."""

from config.celery import app

__all__ = ("app",)
