from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from core.api import StrictBooleanField
from ledger.serializers import CreditsField, CreditsInputField
from modelfactory import hooks
from modelfactory.models import BaseModel, FineTuneJob, ModelEvaluation, ModelExport, TrainedModel
from modelfactory.selectors import job_queue_position
from modelfactory.training.presets import PRESETS


class BaseModelSerializer(serializers.ModelSerializer):
    class Meta:
        model = BaseModel
        fields = ["slug", "name", "parameters", "context_length", "architecture", "licence", "is_default"]


class FineTuneCreateSerializer(serializers.Serializer):
    base_model = serializers.SlugField(
        required=False, help_text="Slug of a base model (GET /api/v1/base-models/). Not needed with from_model."
    )
    from_model = serializers.SlugField(
        required=False,
        help_text="Train again from this model of yours: training starts from its newest version's adapter, with "
        "that version's settings (base model, preset and hyperparameters are then ignored), and the result becomes "
        "the model's next version.",
    )
    datanet_versions = serializers.ListField(child=serializers.IntegerField(min_value=1), allow_empty=False)
    test_versions = serializers.ListField(
        child=serializers.IntegerField(min_value=1),
        required=False,
        default=list,
        help_text="Datanet versions (instruction or chat) to use as a test set: answered by base and tuned and "
        "scored (exact match, token F1) besides the held-out rows; rows the model trained on are left out of the "
        "score and counted.",
    )
    preset = serializers.ChoiceField(choices=list(PRESETS), default="balanced")
    hyperparameters = serializers.DictField(required=False, default=dict, help_text="Overrides on top of the preset.")
    name = serializers.CharField(required=False, allow_blank=True, max_length=200, default="")
    idempotency_key = serializers.CharField(
        required=False,
        max_length=64,
        help_text="Send the same key again (or the Idempotency-Key header) to get the same job instead of a new one.",
    )

    def validate(self, attrs):
        if not attrs.get("base_model") and not attrs.get("from_model"):
            raise serializers.ValidationError({"base_model": ["This field is required (or give from_model)."]})
        return attrs


class FineTuneJobSerializer(serializers.ModelSerializer):
    base_model = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    datanet_versions = serializers.PrimaryKeyRelatedField(many=True, read_only=True)
    test_versions = serializers.PrimaryKeyRelatedField(many=True, read_only=True)
    model = serializers.SerializerMethodField()
    queue_position = serializers.SerializerMethodField()

    class Meta:
        model = FineTuneJob
        fields = [
            "id", "name", "status", "phase", "progress", "step", "total_steps", "message", "base_model",
            "datanet_versions", "test_versions", "preset", "hyperparameters", "estimate", "metrics", "samples",
            "queue_position", "model", "created_at", "started_at", "finished_at",
        ]  # fmt: skip
        extra_kwargs = {
            "phase": {
                "help_text": "queued while status is queued; loading, training, evaluating, saving or a post-training "
                "stage (indexing) while running; done once succeeded; the phase it ended in once failed or cancelled."
            }
        }

    def get_model(self, job) -> str | None:
        version = getattr(job, "model_version", None) if job.status == FineTuneJob.Status.SUCCEEDED else None
        return version.model.slug if version else None

    def get_queue_position(self, job) -> int | None:
        if "queue_position" in job.__dict__:  # read with the list (selectors.job_list_detailed)
            return job.queue_position
        return job_queue_position(job=job)


class FineTuneControlSerializer(serializers.Serializer):
    mode = serializers.ChoiceField(
        choices=["cancel", "stop"], default="cancel", help_text="stop = keep the adapter so far; cancel = discard."
    )


class RetrievalSettingsSerializer(serializers.Serializer):
    enabled = StrictBooleanField(help_text="Answers look up rows of the data and cite them.")
    top_k = serializers.IntegerField(
        required=False, min_value=1, max_value=10, help_text="Most rows put before a question (default 4)."
    )
    datanet_versions = serializers.ListField(
        child=serializers.IntegerField(),
        required=False,
        help_text="Datanet version ids to answer from; default: the versions the model was trained on.",
    )
    live = StrictBooleanField(
        required=False, help_text="Follow each datanet's latest version: new accepted rows answer without retraining."
    )


class TrainedModelSerializer(serializers.ModelSerializer):
    owner = serializers.CharField(source="owner.username", read_only=True)
    base_model = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    version = serializers.SerializerMethodField()
    metrics = serializers.SerializerMethodField()
    retrieval = serializers.SerializerMethodField(
        help_text="How answers draw on the data: {enabled, top_k, live, datanet_versions} (see publish)."
    )
    price_per_1k_tokens = CreditsField(
        read_only=True, help_text="Credits per 1,000 tokens, a decimal string with 6 places (as publish takes it)."
    )

    class Meta:
        model = TrainedModel
        fields = ["slug", "name", "owner", "base_model", "visibility", "status", "price_per_1k_tokens", "version",
                  "metrics", "retrieval", "created_at"]  # fmt: skip

    def get_version(self, model) -> int | None:
        version = model.latest_version
        return version.number if version else None

    def get_metrics(self, model) -> dict:
        version = model.latest_version
        return version.metrics if version else {}

    def get_retrieval(self, model) -> RetrievalSettingsSerializer:
        versions = sorted(v.pk for v in model.retrieval_versions.all()) if model.retrieval_enabled else []
        return {"enabled": model.retrieval_enabled, "top_k": model.retrieval_top_k, "live": model.retrieval_live,
                "datanet_versions": versions}  # fmt: skip


class QualityMeasurementSerializer(serializers.Serializer):
    metric = serializers.ChoiceField(
        choices=["planted_fact_top1", "lds", "unattributed_in_domain", "unattributed_out_of_domain"],
        help_text="planted_fact_top1: share of made-up-fact questions whose largest share went to the fact's "
        "contributor; lds: linear datamodeling score; unattributed_*: mean untraced share of an answer, to the data's "
        "own questions or to questions about things not in the data.",
    )
    value = serializers.FloatField()
    bench_model = serializers.CharField(help_text='The model the bench ran on: "tiny" (a small test model), or a name.')
    date = serializers.DateField(help_text="When the bench ran (UTC).")
    bench = serializers.CharField(help_text="The bench script that measured it.")
    command = serializers.CharField(help_text="The command line that produced it.")
    counts = serializers.DictField(child=serializers.IntegerField(), help_text="Sample sizes, e.g. queries, subsets.")
    details = serializers.DictField(help_text="Other facts of the run, e.g. the facts' recall.")


class TracedAnswersSerializer(serializers.Serializer):
    total = serializers.IntegerField(help_text="Completed answers of this version.")
    traced = serializers.IntegerField(help_text="Answers the attribution engine traced.")
    fallback = serializers.IntegerField(help_text="Answers whose tracing failed, paid by row shares instead.")
    pending = serializers.IntegerField(help_text="Answers not traced yet.")
    traced_share = serializers.FloatField(
        allow_null=True, help_text="Mean share (0..1) of a traced answer that was traced to training rows."
    )


class AttributionQualitySerializer(serializers.Serializer):
    method_version = serializers.CharField(
        allow_null=True, help_text="The attribution method the version's index records; null without an index."
    )
    measurements = QualityMeasurementSerializer(
        many=True, help_text="What the product's benches measured for this method, per metric the figure the page "
        "states first; empty when it has not been measured yet.",
    )  # fmt: skip
    answers = TracedAnswersSerializer()


class TrainedModelDetailSerializer(TrainedModelSerializer):
    attribution_quality = serializers.SerializerMethodField(
        help_text="How well this version's payments follow its data: its attribution method's measured figures and "
        "how much of its answers so far was traced to training rows."
    )

    class Meta(TrainedModelSerializer.Meta):
        fields = [*TrainedModelSerializer.Meta.fields, "attribution_quality"]

    @extend_schema_field(AttributionQualitySerializer(allow_null=True))
    def get_attribution_quality(self, model) -> dict | None:
        version = model.latest_version
        quality = hooks.model_quality(version=version) if version else None
        return AttributionQualitySerializer(quality).data if quality is not None else None


class PublishSerializer(serializers.Serializer):
    price_per_1k_tokens = CreditsInputField(
        help_text="Price per 1,000 tokens (prompt + answer) in credits, as a decimal string with up to 6 places, "
        'e.g. "0.002000". Operators set the allowed range.',
    )
    visibility = serializers.ChoiceField(choices=TrainedModel.Visibility.choices, default="public")
    allow_exports = StrictBooleanField(
        required=False,
        help_text="Let others download this model's files (adapter, merged, GGUF) while it is public. "
        "Left out: unchanged. Never for a private model.",
    )

    retrieval = RetrievalSettingsSerializer(
        required=False, help_text="Answer from the data with cited, paid sources; left out: unchanged."
    )


class ExportRequestSerializer(serializers.Serializer):
    format = serializers.ChoiceField(choices=ModelExport.Format.choices)


class ExportSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    model = serializers.CharField(help_text="The model's slug.")
    model_version = serializers.IntegerField()
    format = serializers.ChoiceField(choices=ModelExport.Format.choices)
    status = serializers.ChoiceField(choices=ModelExport.Status.choices)
    progress = serializers.FloatField(help_text="0..1")
    download_url = serializers.CharField(allow_null=True, help_text="Set once the file is ready.")
    instructions_url = serializers.CharField(help_text="The page that says how to use the file.")
    sha256 = serializers.CharField(allow_blank=True)
    bytes = serializers.IntegerField(allow_null=True)
    message = serializers.CharField(allow_blank=True)


class ChatMessageSerializer(serializers.Serializer):
    role = serializers.ChoiceField(choices=["system", "user", "assistant"])
    content = serializers.CharField(allow_blank=True, trim_whitespace=False)


class GenerateRequestSerializer(serializers.Serializer):
    messages = ChatMessageSerializer(many=True, required=False, help_text="A conversation; or send `prompt`.")
    prompt = serializers.CharField(required=False, allow_blank=True, trim_whitespace=False)
    max_new_tokens = serializers.IntegerField(required=False, help_text="Longest answer in tokens (operators cap it).")
    temperature = serializers.FloatField(required=False, default=0.0, help_text="0 = always the likeliest word.")
    top_p = serializers.FloatField(required=False, allow_null=True, default=None)


class UsageSerializer(serializers.Serializer):
    prompt_tokens = serializers.IntegerField()
    completion_tokens = serializers.IntegerField()


class CitationSerializer(serializers.Serializer):
    index = serializers.IntegerField(help_text="The number the answer cites it by: [1], [2], ...")
    record_id = serializers.IntegerField()
    contributor = serializers.CharField(help_text="Username of the row's contributor (paid for the citation).")
    datanet = serializers.CharField(help_text="Slug of the row's datanet.")
    score = serializers.FloatField(help_text="Full-text match score; higher is a closer match.")
    text = serializers.CharField(
        allow_null=True,
        help_text="The row's text; null when the row belongs to a private datanet that you may not see.",
    )


class GenerateResponseSerializer(serializers.Serializer):
    inference_id = serializers.IntegerField()
    model = serializers.CharField()
    model_version = serializers.IntegerField(help_text="The exact version that answered.")
    output = serializers.CharField()
    finish_reason = serializers.CharField()
    usage = UsageSerializer()
    fee = serializers.CharField(help_text="Credits owed for this answer, decimal string with 6 places.")
    fee_reserved = serializers.CharField(help_text="Credits held before generating (the most it could cost).")
    citations = CitationSerializer(
        many=True,
        required=False,
        help_text="Only when the model answers with retrieval: the rows put before the question, numbered as the "
        "answer cites them (empty: nothing matched, the answer has no sources).",
    )


class InferenceSerializer(serializers.Serializer):
    id = serializers.IntegerField(help_text="The inference id; the OpenAI API calls it `chatcmpl-<id>`.")
    completion_id = serializers.CharField(help_text="The `id` the OpenAI-compatible API answered: chatcmpl-<id>.")
    model = serializers.CharField()
    model_version = serializers.IntegerField(help_text="The exact version that answered.")
    source = serializers.ChoiceField(choices=["api", "openai", "playground"])
    status = serializers.ChoiceField(choices=["pending", "completed", "failed", "cancelled"])
    output = serializers.CharField(allow_blank=True)
    finish_reason = serializers.CharField(allow_blank=True, help_text="stop, length or cancelled; empty while pending.")
    usage = UsageSerializer()
    fee = serializers.CharField(help_text="Credits owed for this answer, decimal string with 6 places.")
    fee_reserved = serializers.CharField(help_text="Credits held before generating (the most it could cost).")
    error = serializers.CharField(allow_blank=True)
    created = serializers.DateTimeField()
    completed = serializers.DateTimeField(allow_null=True)
    attribution = serializers.URLField(help_text="Who shaped this answer and what each was paid.")
    citations = CitationSerializer(many=True, required=False, help_text="As in the generate response.")


class EvaluationRequestSerializer(serializers.Serializer):
    test_versions = serializers.ListField(
        child=serializers.IntegerField(min_value=1),
        required=False,
        default=list,
        help_text="Datanet versions (instruction or chat rows) of datanets you may use, as the test set. Or send "
        "`file` instead (multipart).",
    )
    file = serializers.FileField(
        required=False,
        help_text="A JSONL, JSON, CSV, TSV or Parquet file of instruction rows (instruction, output) or chat rows "
        "(messages), as the test set. Or send `test_versions` instead.",
    )


class EvaluationTotalsSerializer(serializers.Serializer):
    answers_scored = serializers.IntegerField(help_text="Rows answered by both models and scored.")
    base_exact_match = serializers.FloatField(allow_null=True, help_text="Share of base answers equal to the expected.")
    exact_match = serializers.FloatField(allow_null=True, help_text="The same for the fine-tuned model.")
    base_token_f1 = serializers.FloatField(allow_null=True, help_text="Mean token F1 of base answers, 0..1.")
    token_f1 = serializers.FloatField(allow_null=True, help_text="Mean token F1 of fine-tuned answers, 0..1.")
    base_eval_loss = serializers.FloatField(allow_null=True, help_text="Loss on the expected answers, base.")
    eval_loss = serializers.FloatField(allow_null=True, help_text="Loss on the expected answers, fine-tuned.")


class EvaluationSampleSerializer(serializers.Serializer):
    row_id = serializers.IntegerField(allow_null=True, help_text="The record id, or the line of an uploaded file.")
    prompt = serializers.CharField()
    reference = serializers.CharField(help_text="The expected answer.")
    base = serializers.CharField(allow_blank=True)
    tuned = serializers.CharField(allow_blank=True)
    base_exact = serializers.BooleanField()
    tuned_exact = serializers.BooleanField()
    base_f1 = serializers.FloatField()
    tuned_f1 = serializers.FloatField()


class EvaluationSummarySerializer(serializers.Serializer):
    id = serializers.IntegerField()
    model = serializers.CharField(help_text="The model's slug.")
    model_version = serializers.IntegerField()
    job = serializers.IntegerField(help_text="The training job that made the model version.")
    status = serializers.ChoiceField(choices=ModelEvaluation.Status.choices)
    progress = serializers.FloatField(help_text="0..1")
    message = serializers.CharField(allow_blank=True)
    test_versions = serializers.ListField(child=serializers.IntegerField())
    upload_name = serializers.CharField(allow_blank=True, help_text="The uploaded file's name, if the test set is one.")
    rows = serializers.IntegerField(help_text="Rows in the test set.")
    overlap = serializers.IntegerField(help_text="Rows the model trained on: counted, left out of the score.")
    totals = EvaluationTotalsSerializer(allow_null=True, help_text="Set once it has finished.")
    created_at = serializers.DateTimeField()
    finished_at = serializers.DateTimeField(allow_null=True)


class EvaluationSerializer(EvaluationSummarySerializer):
    samples = EvaluationSampleSerializer(many=True, help_text="Every scored row: expected, base and tuned answers.")
