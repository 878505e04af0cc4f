from django.contrib import admin

from core.models import WorkerHeartbeat


class ReadOnlyAdmin(admin.ModelAdmin):
    """For records nobody may add, edit or delete in the admin (immutable versions, answers owed): view only."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(WorkerHeartbeat)
class WorkerHeartbeatAdmin(admin.ModelAdmin):
    list_display = ["hostname", "queues", "pid", "started_at", "last_seen"]
    readonly_fields = ["hostname", "queues", "pid", "started_at", "last_seen"]
