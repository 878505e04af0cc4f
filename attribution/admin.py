from django.contrib import admin

from attribution.models import Attribution, AttributionShare, ContributionFinding, ContributionValue, ModelIndex


class ReadOnlyAdmin(admin.ModelAdmin):
    """Results of computations: operators read them; changing one would break the link to the ledger."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


# "Model indexes", not Django's "Model indexs". Set here rather than in Meta: that would need a migration (a no-op
# AlterModelOptions), which this change does not add; move it to Meta with the next migration of the app.
ModelIndex._meta.verbose_name_plural = "model indexes"


@admin.register(ModelIndex)
class ModelIndexAdmin(ReadOnlyAdmin):
    list_display = ("id", "job", "rows", "k", "seed", "method_version", "bytes", "build_seconds", "created_at")
    search_fields = ("job__name",)


@admin.register(ContributionValue)
class ContributionValueAdmin(ReadOnlyAdmin):
    list_display = ("contribution", "datanet", "contributor", "index", "rows", "value", "z", "harmful")
    list_filter = ("harmful", "datanet")
    search_fields = ("contributor__username", "datanet__name")


@admin.register(ContributionFinding)
class ContributionFindingAdmin(ReadOnlyAdmin):
    """Curators' verdicts (made on the datanet's attribution page or through the API, which apply them)."""

    list_display = ("contribution", "datanet", "contributor", "verdict", "reason", "curator", "created_at")
    list_filter = ("verdict", "datanet")
    search_fields = ("contributor__username", "datanet__name")


class AttributionShareInline(admin.TabularInline):
    model = AttributionShare
    extra = 0
    can_delete = False
    readonly_fields = ("contributor", "model", "share", "settled_share", "amount_micro", "created_at")

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Attribution)
class AttributionAdmin(ReadOnlyAdmin):
    list_display = (
        "inference",
        "status",
        "settlement_status",
        "method_version",
        "unattributed",
        "attempts",
        "settlement_tx",
        "created_at",
        "finished_at",
    )
    list_filter = ("status", "settlement_status", "method_version")
    search_fields = ("inference__id", "inference__model__slug")
    inlines = [AttributionShareInline]


@admin.register(AttributionShare)
class AttributionShareAdmin(ReadOnlyAdmin):
    list_display = ("attribution", "contributor", "model", "share", "settled_share", "amount_micro", "created_at")
    search_fields = ("contributor__username", "model__slug")
