from django.db.models import QuerySet

from modelfactory.models import BaseModel


def base_model_list() -> QuerySet[BaseModel]:
    return BaseModel.objects.filter(is_active=True)
