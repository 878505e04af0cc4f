from django.contrib import admin  # noqa: F401  (registered with the models)
