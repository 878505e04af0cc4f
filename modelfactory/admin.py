from django.contrib import admin

from core.admin import ReadOnlyAdmin
from modelfactory.forms import BaseModelRegisterForm
from modelfactory.models import (
    BaseModel,
    FineTuneEvent,
    FineTuneJob,
    Inference,
    ModelVersion,
    ServingPolicy,
    TrainedModel,
)
from modelfactory.services import base_model_register


@admin.register(BaseModel)
class BaseModelAdmin(admin.ModelAdmin):
    """Adding one registers a local folder through base_model_register, after its check (a family known to work, a
    chat template, a size this machine can train): a refused folder is named on the form and nothing is written."""

    list_display = ["name", "slug", "parameters_label", "architecture", "context_length", "licence", "is_default",
                    "is_active"]  # fmt: skip
    list_filter = ["is_default", "is_active"]
    search_fields = ["name", "slug", "path"]
    readonly_fields = ["parameters", "context_length", "architecture", "created_at"]
    add_form = BaseModelRegisterForm

    def get_form(self, request, obj=None, change=False, **kwargs):
        if obj is None:
            kwargs["form"] = self.add_form
        return super().get_form(request, obj, change=change, **kwargs)

    def get_fields(self, request, obj=None):
        if obj is None:
            return list(self.add_form.Meta.fields)
        return super().get_fields(request, obj)

    def get_readonly_fields(self, request, obj=None):
        return [] if obj is None else self.readonly_fields

    def save_form(self, request, form, change):
        if change:
            return super().save_form(request, form, change)
        data = form.cleaned_data
        return base_model_register(
            path=data["path"], name=data["name"], slug=data["slug"], licence=data.get("licence", ""),
            make_default=bool(data.get("is_default")), check=True,
        )  # fmt: skip

    def save_model(self, request, obj, form, change):
        if change:  # an added model was written by base_model_register in save_form
            super().save_model(request, obj, form, change)

    def save_related(self, request, form, formsets, change):
        if change:  # as above (a base model has no many-to-many fields to save)
            super().save_related(request, form, formsets, change)


class FineTuneEventInline(admin.TabularInline):
    model = FineTuneEvent
    extra = 0
    can_delete = False
    fields = ["kind", "step", "loss", "eval_loss", "lr", "tokens_per_s", "eta_s", "memory_bytes", "created_at"]
    readonly_fields = fields

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(FineTuneJob)
class FineTuneJobAdmin(admin.ModelAdmin):
    list_display = ["id", "name", "owner", "base_model", "status", "progress", "worker", "created_at", "finished_at"]
    list_filter = ["status", "preset", "base_model"]
    search_fields = ["name", "owner__username"]
    readonly_fields = [f.name for f in FineTuneJob._meta.fields if f.name not in ("name",)]
    inlines = [FineTuneEventInline]


class ModelVersionInline(admin.TabularInline):
    model = ModelVersion
    extra = 0
    can_delete = False
    fields = ["number", "job", "artifact_hash", "created_at"]
    readonly_fields = fields

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(TrainedModel)
class TrainedModelAdmin(admin.ModelAdmin):
    list_display = ["name", "slug", "owner", "status", "visibility", "price_per_1k_tokens", "created_at"]
    list_filter = ["status", "visibility"]
    search_fields = ["name", "slug", "owner__username"]
    inlines = [ModelVersionInline]


@admin.register(ServingPolicy)
class ServingPolicyAdmin(admin.ModelAdmin):
    """Price bounds and answer-length cap for every published model (one row)."""

    list_display = ["__str__", "min_price_per_1k_tokens", "max_price_per_1k_tokens", "max_new_tokens_cap",
                    "default_max_new_tokens", "updated_at"]  # fmt: skip

    def has_add_permission(self, request):
        return not ServingPolicy.objects.exists()

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(Inference)
class InferenceAdmin(ReadOnlyAdmin):
    """Read-only: answers are records of what was asked, answered and owed."""

    list_display = ["id", "model", "model_version", "caller", "source", "status", "prompt_tokens",
                    "completion_tokens", "fee_micro", "finish_reason", "latency_ms", "created_at"]  # fmt: skip
    list_filter = ["status", "source", "finish_reason"]
    search_fields = ["model__slug", "caller__username", "hold_key"]
    list_select_related = ["model", "model_version__model", "caller"]
    date_hierarchy = "created_at"

    def get_readonly_fields(self, request, obj=None):
        return [field.name for field in Inference._meta.fields]
