"""Plain-Python helpers shared by every app and pure core: no Django, no import of any app of ours, so anything
(a view, a Celery task, a training loop on a GPU machine) may use them."""
