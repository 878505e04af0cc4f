from django.urls import path

from datanets import views

app_name = "datanets"
urlpatterns = [
    path("", views.datanet_list, name="list"),
    path("new/", views.datanet_create, name="create"),
    path("contributions/<int:pk>/", views.contribution_detail, name="contribution"),
    path("contributions/<int:pk>/rows/", views.contribution_rows, name="contribution_rows"),
    path("contributions/<int:pk>/retry/", views.contribution_retry, name="contribution_retry"),
    path(
        "contributions/<int:pk>/approve/",
        views.contribution_review,
        {"decision": "approve"},
        name="contribution_approve",
    ),
    path(
        "contributions/<int:pk>/reject/", views.contribution_review, {"decision": "reject"}, name="contribution_reject"
    ),
    path("rows/<int:pk>/drop/", views.record_drop, name="record_drop"),
    path("<slug:slug>/", views.datanet_detail, name="detail"),
    path("<slug:slug>/settings/", views.datanet_settings, name="settings"),
    path("<slug:slug>/upload/", views.datanet_upload, name="upload"),
    path("<slug:slug>/upload/example.jsonl", views.datanet_upload_example, name="upload-example"),
    path("<slug:slug>/contributions/", views.contribution_list, name="contributions"),
    path("<slug:slug>/review/", views.review_queue, name="review"),
    path("<slug:slug>/versions/", views.version_list, name="versions"),
    path("<slug:slug>/versions/<int:number>/", views.version_detail, name="version"),
    path("<slug:slug>/contributors/", views.contributor_stats, name="contributors"),
    path("<slug:slug>/export.csv", views.datanet_export, name="export"),
]
