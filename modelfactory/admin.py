from django.contrib import admin

from modelfactory.models import BaseModel


@admin.register(BaseModel)
class BaseModelAdmin(admin.ModelAdmin):
    list_display = ["name", "slug", "parameters_label", "context_length", "licence", "is_default", "is_active"]
    list_filter = ["is_default", "is_active"]
    search_fields = ["name", "slug", "path"]
    readonly_fields = ["parameters", "context_length", "architecture", "created_at"]
