"""Model factory writes, one module per use case:

- base_models: registering base-model folders (and the bundled default).
- calibration: a training worker's measured throughput per base model, taken when it starts (the first estimate).
- finetune_jobs: launching a fine-tune (validate, create, enqueue), stop/cancel, the stale-job sweep.
- continue_training: train again from a model (its next version starts from its adapter), and the lineage.
- finetune_worker: a job on the training worker (claim or resume, heartbeat and progress, post-training stages,
  the trained model).
- publishing: publish/unpublish a trained model within the price policy; the fee rule.
- inference_requests: a call's validation, token count and hold, handed to the inference queue (and the billing
  rule in its docstring).
- inference_worker: generation, completion or failure of an inference; the stale-inference sweep.
- inference_stream: the web side's wait for an answer, streamed or whole.
- base_compare: the playground's free base-model comparison.
- evaluations: "evaluate again": a finished model answers a test set chosen after training, scored base vs tuned.
- exports: a model version's files for use elsewhere (adapter, merged, GGUF), made once by a background task.
- retrieval: a model's retrieval settings, the rows a question retrieves, and the citations a caller sees.

Everything public is re-exported here, so `modelfactory.services.X` names the same object as before the split.
To replace a function in a test, patch the module that looks it up (e.g. finetune_jobs._enqueue).
"""

from modelfactory.services.base_compare import base_compare_start, base_generate
from modelfactory.services.base_models import (
    base_model_check,
    base_model_ensure_default,
    base_model_names,
    base_model_register,
)
from modelfactory.services.calibration import finetune_calibrate
from modelfactory.services.continue_training import finetune_continue, lineage_jobs, model_lineage
from modelfactory.services.errors import ServingRefused
from modelfactory.services.evaluations import (
    EvaluationRefused,
    evaluation_cancel,
    evaluation_reap_stale,
    evaluation_request,
    evaluation_run,
    upload_rows_read,
)
from modelfactory.services.exports import export_reap_stale, export_request, export_run
from modelfactory.services.finetune_jobs import (
    RESUME_QUEUED_MESSAGE,
    IdempotencyConflict,
    JobStateError,
    LaunchError,
    finetune_control,
    finetune_fail_if_out_of_memory,
    finetune_launch,
    finetune_reap_stale,
    launch_fingerprint,
    test_set_versions_validated,
)
from modelfactory.services.finetune_worker import PHASE_MESSAGES, finetune_run, trained_model_create_from_job
from modelfactory.services.inference_requests import (
    UNREACHABLE,
    inference_admit,
    inference_start,
    inference_worker_alive,
    model_servable,
)
from modelfactory.services.inference_stream import (
    ERROR_STATUS,
    inference_channel,
    inference_events,
    inference_stream_ack,
    inference_stream_stop,
    inference_wait,
)
from modelfactory.services.inference_worker import (
    inference_complete,
    inference_fail,
    inference_generate,
    inference_reap_stale,
)
from modelfactory.services.publishing import fee_for_tokens, trained_model_publish, trained_model_unpublish
from modelfactory.services.retrieval import (
    NO_SOURCES,
    citations_for,
    retrieval_index_build,
    retrieval_prepare,
    retrieval_searched_version_ids,
    retrieval_settings_apply,
    retrieval_settings_clean,
    trained_version_ids,
)

__all__ = [
    "finetune_calibrate",
    "EvaluationRefused",
    "evaluation_cancel",
    "evaluation_reap_stale",
    "evaluation_request",
    "evaluation_run",
    "upload_rows_read",
    "test_set_versions_validated",
    "NO_SOURCES",
    "citations_for",
    "retrieval_index_build",
    "retrieval_prepare",
    "retrieval_searched_version_ids",
    "retrieval_settings_apply",
    "retrieval_settings_clean",
    "trained_version_ids",
    "finetune_continue",
    "lineage_jobs",
    "model_lineage",
    "ERROR_STATUS",
    "export_reap_stale",
    "export_request",
    "export_run",
    "PHASE_MESSAGES",
    "RESUME_QUEUED_MESSAGE",
    "UNREACHABLE",
    "IdempotencyConflict",
    "JobStateError",
    "LaunchError",
    "ServingRefused",
    "base_compare_start",
    "base_generate",
    "base_model_check",
    "base_model_ensure_default",
    "base_model_names",
    "base_model_register",
    "fee_for_tokens",
    "finetune_control",
    "finetune_launch",
    "finetune_fail_if_out_of_memory",
    "finetune_reap_stale",
    "launch_fingerprint",
    "finetune_run",
    "inference_channel",
    "inference_complete",
    "inference_events",
    "inference_fail",
    "inference_generate",
    "inference_reap_stale",
    "inference_start",
    "inference_stream_ack",
    "inference_stream_stop",
    "inference_wait",
    "inference_admit",
    "inference_worker_alive",
    "model_servable",
    "trained_model_create_from_job",
    "trained_model_publish",
    "trained_model_unpublish",
]
