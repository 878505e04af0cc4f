from django.contrib import admin

from core.admin import ReadOnlyAdmin
from datanets.models import Contribution, Datanet, DatanetVersion, Record, Tag, VersionRecord


@admin.register(Tag)
class TagAdmin(admin.ModelAdmin):
    search_fields = ["name"]


@admin.register(Datanet)
class DatanetAdmin(admin.ModelAdmin):
    list_display = ["slug", "name", "kind", "visibility", "policy", "owner", "created_at"]
    list_filter = ["kind", "visibility", "policy"]
    search_fields = ["slug", "name", "summary"]
    autocomplete_fields = ["owner", "curators", "tags"]


@admin.register(Contribution)
class ContributionAdmin(admin.ModelAdmin):
    list_display = [
        "id",
        "datanet",
        "contributor",
        "original_name",
        "status",
        "rejected_as",
        "rows_total",
        "rows_accepted",
    ]
    list_filter = ["status", "rejected_as", "detected_format"]
    search_fields = ["original_name", "sha256", "contributor__username", "datanet__slug"]
    raw_id_fields = ["datanet", "contributor", "reviewed_by"]
    # rejected_as decided what happened to the upload's bond (a ledger transaction): reject again to change it, not here
    readonly_fields = [
        "sha256", "size", "report", "rejected_as", "created_at", "started_at", "finished_at", "heartbeat_at"
    ]  # fmt: skip


@admin.register(Record)
class RecordAdmin(admin.ModelAdmin):
    list_display = ["id", "datanet", "contributor", "status", "token_count", "content_hash"]
    list_filter = ["status"]
    search_fields = ["content_hash", "text"]
    raw_id_fields = ["datanet", "contribution", "contributor"]
    readonly_fields = ["content_hash", "content", "text", "copy_of"]  # set at ingest, never by hand


class VersionRecordInline(admin.TabularInline):
    model = VersionRecord
    raw_id_fields = ["record"]
    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(DatanetVersion)
class DatanetVersionAdmin(ReadOnlyAdmin):
    """Read-only: versions never change once published."""

    list_display = ["datanet", "number", "manifest_hash", "row_count", "contributor_count", "created_at"]
    search_fields = ["datanet__slug", "manifest_hash"]
    inlines = [VersionRecordInline]


@admin.register(VersionRecord)
class VersionRecordAdmin(ReadOnlyAdmin):
    list_display = ["version", "record"]
    raw_id_fields = ["version", "record"]
