try:
    from modelfactory.celery import app as celery_app
except ModuleNotFoundError as exc:
    if exc.name not in ("celery", "kombu"):
        raise
    # Without Celery (a GPU machine with only torch and transformers running bench/), the plain sub-packages
    # (modelfactory.training) still import; the web and the workers need Celery and fail on first use of it.
    celery_app = None

__all__ = ["celery_app"]
