import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
application = get_wsgi_application()

# Load the URL configuration, and with it every view module, now rather than on the first request (seconds):
# under `gunicorn --preload` the workers are forked with it loaded, so no visitor waits for a cold worker.
from django.urls import get_resolver  # noqa: E402

get_resolver().url_patterns  # noqa: B018
