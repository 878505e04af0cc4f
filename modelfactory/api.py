from rest_framework import viewsets

from modelfactory.selectors import base_model_list
from modelfactory.serializers import BaseModelSerializer


class BaseModelViewSet(viewsets.ReadOnlyModelViewSet):
    """Base models available for fine-tuning."""

    serializer_class = BaseModelSerializer
    lookup_field = "slug"

    def get_queryset(self):
        return base_model_list()
