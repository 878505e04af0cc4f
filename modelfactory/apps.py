from django.apps import AppConfig


class ModelFactoryConfig(AppConfig):
    name = "modelfactory"
    verbose_name = "Model factory"
