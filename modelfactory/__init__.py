"""The Django project package. The Celery app (modelfactory/celery.py) is loaded by ModelFactoryConfig.ready(), not
here, so that the plain ML modules under modelfactory/training/ import without Django or Celery (a GPU machine, a
benchmark); `celery -A modelfactory` still finds it as the `celery` submodule."""
