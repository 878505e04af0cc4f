"""The Django project package (as in cookiecutter-django): settings and env parsing, root urls, the Celery app,
wsgi/asgi and the home page. Apps never import it; they read `django.conf.settings`.

The Celery app is loaded here, so every process that loads the settings (web, workers, management commands) has it
before any task is sent: `celery -A config worker ...`."""

from config.celery import app as celery_app

__all__ = ("celery_app",)
