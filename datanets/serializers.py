import json
from decimal import Decimal

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers
from rest_framework.utils import html

from datanets.ingest.screen import ACTIONS
from datanets.models import Contribution, Datanet, DatanetVersion, Record


class FormListField(serializers.ListField):
    """A list; in a form (multipart) request one empty part is an empty item, refused by the item's rules. DRF took
    it as an empty list, so a PATCH with an empty `curators` part silently removed every curator. (Send [] as JSON
    to empty a list.)"""

    def get_value(self, dictionary):
        if html.is_html_input(dictionary) and dictionary.getlist(self.field_name) == [""]:
            return [""]
        return super().get_value(dictionary)


class FlagActionsField(serializers.DictField):
    """{flag: action}. In a form (multipart) request it is one JSON part, as the schema documents it: DRF's DictField
    looked only for `flag_actions.<flag>` parts there and took a JSON part as an empty object, changing nothing."""

    def __init__(self, **kwargs):
        super().__init__(child=serializers.ChoiceField(choices=ACTIONS), **kwargs)

    def get_value(self, dictionary):
        if html.is_html_input(dictionary) and self.field_name in dictionary:
            raw = dictionary.get(self.field_name)
            try:
                return json.loads(raw) if isinstance(raw, str) else raw
            except ValueError:
                return raw  # not JSON: refused as "Expected a dictionary of items"
        return super().get_value(dictionary)


class DatanetSerializer(serializers.ModelSerializer):
    tags = serializers.SlugRelatedField(many=True, read_only=True, slug_field="name")
    owner = serializers.CharField(source="owner.username", read_only=True)
    curators = serializers.SlugRelatedField(many=True, read_only=True, slug_field="username")
    bond = serializers.SerializerMethodField(
        help_text="Credits (decimal string, 6 places) held from a contributor's wallet per upload: returned when the "
        "upload is accepted or rejected as not a fit, forfeited to the datanet's pool when it is rejected as spam or "
        "confirmed harmful; 0: no bond."
    )

    class Meta:
        model = Datanet
        fields = [
            "slug",
            "name",
            "kind",
            "summary",
            "description",
            "tags",
            "licence",
            "visibility",
            "policy",
            "owner",
            "curators",
            "flag_actions",
            "holding_days",
            "bond",
            "created_at",
        ]

    def get_bond(self, datanet) -> str:
        return f"{Decimal(datanet.bond_micro) / 1_000_000:.6f}"


class DatanetCreateSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=200)
    slug = serializers.SlugField(max_length=100, required=False, allow_blank=True)
    kind = serializers.ChoiceField(choices=Datanet.Kind.choices)
    summary = serializers.CharField(max_length=300)
    description = serializers.CharField(required=False, allow_blank=True, default="")
    tags = FormListField(child=serializers.CharField(max_length=50), required=False, max_length=20)
    licence = serializers.CharField(max_length=100, required=False, default="CC-BY-4.0")
    visibility = serializers.ChoiceField(choices=Datanet.Visibility.choices)
    policy = serializers.ChoiceField(choices=Datanet.Policy.choices, required=False, default="approval")
    flag_actions = FlagActionsField(required=False)


class DatanetUpdateSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=200, required=False)
    summary = serializers.CharField(max_length=300, required=False)
    description = serializers.CharField(required=False, allow_blank=True)
    tags = FormListField(child=serializers.CharField(max_length=50), required=False, max_length=20)
    licence = serializers.CharField(max_length=100, required=False)
    visibility = serializers.ChoiceField(choices=Datanet.Visibility.choices, required=False)
    policy = serializers.ChoiceField(choices=Datanet.Policy.choices, required=False)
    curators = FormListField(child=serializers.CharField(max_length=150), required=False)
    flag_actions = FlagActionsField(required=False)
    holding_days = serializers.IntegerField(
        min_value=0, max_value=365, required=False,
        help_text="Days contributors' earnings from this datanet stay pending before they can be withdrawn.",
    )  # fmt: skip
    bond = serializers.DecimalField(
        max_digits=14, decimal_places=6, min_value=Decimal(0), required=False,
        help_text="Credits held from a contributor's wallet per upload (decimal string); 0: no bond.",
    )  # fmt: skip

    def validate(self, attrs):
        if "bond" in attrs:
            attrs["bond_micro"] = int(attrs.pop("bond") * 1_000_000)
        return attrs


class RowErrorSerializer(serializers.Serializer):
    line = serializers.IntegerField()
    reason = serializers.CharField()


class DuplicateSerializer(serializers.Serializer):
    line = serializers.IntegerField()
    kind = serializers.CharField(help_text="exact or near")
    of_line = serializers.IntegerField(required=False)
    record_id = serializers.IntegerField(required=False)
    in_datanet = serializers.BooleanField(required=False)
    similarity = serializers.FloatField(required=False)


class ReportSerializer(serializers.Serializer):
    format = serializers.CharField()
    notices = serializers.ListField(child=serializers.CharField())
    rows_total = serializers.IntegerField()
    rows_accepted = serializers.IntegerField()
    errors = RowErrorSerializer(many=True)
    errors_total = serializers.IntegerField()
    duplicates = DuplicateSerializer(many=True)
    duplicates_total = serializers.IntegerField()
    dropped_total = serializers.IntegerField()
    flags = serializers.DictField(child=serializers.IntegerField())
    redacted = serializers.DictField(child=serializers.IntegerField())
    tokens = serializers.IntegerField()
    tokens_estimated = serializers.BooleanField()
    error = serializers.CharField(required=False, help_text="Why the whole file could not be read.")


REPORT_DEFAULTS = {
    "format": "",
    "notices": [],
    "rows_total": 0,
    "rows_accepted": 0,
    "errors": [],
    "errors_total": 0,
    "duplicates": [],
    "duplicates_total": 0,
    "dropped_total": 0,
    "flags": {},
    "redacted": {},
    "tokens": 0,
    "tokens_estimated": True,
}


class ContributionSerializer(serializers.ModelSerializer):
    datanet = serializers.CharField(source="datanet.slug", read_only=True)
    contributor = serializers.CharField(source="contributor.username", read_only=True)
    progress = serializers.FloatField(read_only=True)
    report = serializers.SerializerMethodField()

    class Meta:
        model = Contribution
        fields = [
            "id",
            "datanet",
            "contributor",
            "original_name",
            "size",
            "sha256",
            "detected_format",
            "status",
            "message",
            "rejected_as",
            "progress",
            "rows_processed",
            "report",
            "created_at",
            "finished_at",
        ]

    @extend_schema_field(ReportSerializer)
    def get_report(self, obj) -> dict:
        report = obj.report or {}
        data = {key: report.get(key, default) for key, default in REPORT_DEFAULTS.items()}
        if "error" in report:
            data["error"] = report["error"]
        return data


class ContributionUploadSerializer(serializers.Serializer):
    file = serializers.FileField()
    column_mapping = serializers.JSONField(
        required=False, help_text='CSV/Parquet only: {"field": "column"}, e.g. {"instruction": "question"}.'
    )

    def validate_column_mapping(self, value):
        if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
            raise serializers.ValidationError('Give an object of field names to column names: {"output": "answer"}.')
        return value


class ReviewSerializer(serializers.Serializer):
    reason = serializers.CharField(required=False, allow_blank=True, max_length=1000, default="")


class RejectSerializer(ReviewSerializer):
    grounds = serializers.ChoiceField(
        choices=[(c.value, c.label) for c in Contribution.REJECT_CHOICES],
        default=Contribution.RejectedAs.NOT_A_FIT.value,
        help_text="not_a_fit (the default): the upload's bond, if any, goes back to the contributor; spam: the bond is "
        "forfeited to the datanet's pool.",
    )


class VersionSerializer(serializers.ModelSerializer):
    created_by = serializers.CharField(source="created_by.username", read_only=True)

    class Meta:
        model = DatanetVersion
        fields = [
            "id",
            "number",
            "manifest_hash",
            "row_count",
            "contributor_count",
            "token_count",
            "notes",
            "created_by",
            "created_at",
        ]


class VersionPublishSerializer(serializers.Serializer):
    notes = serializers.CharField(required=False, allow_blank=True, max_length=2000, default="")


class RecordSerializer(serializers.ModelSerializer):
    contributor = serializers.CharField(source="contributor.username", read_only=True)

    class Meta:
        model = Record
        fields = [
            "id",
            "contributor",
            "contribution",
            "line",
            "content",
            "content_hash",
            "token_count",
            "flags",
            "status",
        ]


class ContributionRowSerializer(serializers.ModelSerializer):
    """One row of a contribution, as its contributor and the datanet's curators see it."""

    status_label = serializers.CharField(source="get_status_display", read_only=True)
    versions = serializers.SerializerMethodField(help_text="Numbers of the datanet versions that hold this row.")
    copy_of = serializers.IntegerField(
        source="copy_of_id", read_only=True, allow_null=True, help_text="The earlier row this one copies, if any."
    )
    earned = serializers.SerializerMethodField(
        help_text="Credits this row earned its contributor (decimal string, 6 places): each answer's pay to the "
        "contributor divided over their rows in proportion to how much each row shaped that answer. Shown to the "
        "contributor only; null for curators."
    )

    class Meta:
        model = Record
        fields = [
            "id",
            "line",
            "content",
            "token_count",
            "status",
            "status_label",
            "drop_reason",
            "flags",
            "flag_details",
            "copy_of",
            "versions",
            "earned",
        ]

    def get_versions(self, obj) -> list[int]:
        return self.context.get("versions", {}).get(obj.pk, [])

    @extend_schema_field(serializers.CharField(allow_null=True))
    def get_earned(self, obj) -> str | None:
        earned = self.context.get("earned")
        if earned is None:
            return None
        micro = earned.get(obj.pk, 0)  # never negative: a row's part of what its contributor was paid
        return f"{micro // 1_000_000}.{micro % 1_000_000:06d}"
