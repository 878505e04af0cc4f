from rest_framework import serializers


class TokenObtainRequestSerializer(serializers.Serializer):
    username = serializers.CharField()
    password = serializers.CharField(style={"input_type": "password"}, trim_whitespace=False)
    name = serializers.CharField(required=False, default="API login", max_length=100)


class TokenObtainResponseSerializer(serializers.Serializer):
    token = serializers.CharField()
    name = serializers.CharField()
