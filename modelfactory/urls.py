from django.urls import path

from modelfactory import evaluation_views, export_views, views

app_name = "modelfactory"
urlpatterns = [
    path("train/", views.train, name="train"),
    path("train/new/", views.wizard, name="wizard"),
    path("train/compare/", views.jobs_compare, name="compare"),
    path("train/jobs/<int:job_id>/", views.job_detail, name="job"),
    path("train/jobs/<int:job_id>/chart/", views.job_chart, name="job_chart"),
    path("train/jobs/<int:job_id>/control/", views.job_control, name="job_control"),
    path("train/jobs/<int:job_id>/evaluations/", evaluation_views.job_evaluate, name="job_evaluate"),
    path(
        "train/jobs/<int:job_id>/evaluations/<int:evaluation_id>/",
        evaluation_views.job_evaluation,
        name="job_evaluation",
    ),
    path(
        "train/jobs/<int:job_id>/evaluations/<int:evaluation_id>/cancel/",
        evaluation_views.job_evaluation_cancel,
        name="job_evaluation_cancel",
    ),
    path("models/", views.models_list, name="models"),
    path("models/<slug:slug>/", views.model_detail, name="model"),
    path("models/<slug:slug>/download/", views.model_download, name="model_download"),
    path("models/<slug:slug>/exports/", export_views.model_export_start, name="export_start"),
    path("models/<slug:slug>/exports/<int:export_id>/", export_views.model_export, name="export"),
    path(
        "models/<slug:slug>/exports/<int:export_id>/download/",
        export_views.model_export_download,
        name="export_download",
    ),
    path(
        "models/<slug:slug>/exports/<int:export_id>/Modelfile",
        export_views.model_export_modelfile,
        name="export_modelfile",
    ),
    path("models/<slug:slug>/train-again/", views.model_train_again, name="model_train_again"),
    path("models/<slug:slug>/publish/", views.model_publish, name="model_publish"),
    path("models/<slug:slug>/unpublish/", views.model_unpublish, name="model_unpublish"),
    path("models/<slug:slug>/playground/", views.playground, name="playground"),
    path("models/<slug:slug>/playground/start/", views.playground_start, name="playground_start"),
    path("models/<slug:slug>/playground/stream/<int:inference_id>/", views.playground_stream, name="playground_stream"),
    path("models/<slug:slug>/playground/stop/<int:inference_id>/", views.playground_stop, name="playground_stop"),
    path("models/<slug:slug>/playground/answer/<int:inference_id>/", views.playground_answer, name="playground_answer"),
    path("models/<slug:slug>/playground/base/<str:channel>/", views.playground_base, name="playground_base"),
]
