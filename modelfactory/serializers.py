from rest_framework import serializers

from modelfactory.models import BaseModel


class BaseModelSerializer(serializers.ModelSerializer):
    class Meta:
        model = BaseModel
        fields = ["slug", "name", "parameters", "context_length", "architecture", "licence", "is_default"]
