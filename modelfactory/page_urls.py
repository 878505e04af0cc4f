from django.urls import path

from modelfactory import views

app_name = "modelfactory"
urlpatterns = [
    path("train/", views.train, name="train"),
    path("train/new/", views.wizard, name="wizard"),
    path("train/jobs/<int:job_id>/", views.job_detail, name="job"),
    path("train/jobs/<int:job_id>/chart/", views.job_chart, name="job_chart"),
    path("train/jobs/<int:job_id>/control/", views.job_control, name="job_control"),
    path("models/", views.models_list, name="models"),
    path("models/<slug:slug>/", views.model_detail, name="model"),
    path("models/<slug:slug>/download/", views.model_download, name="model_download"),
]
