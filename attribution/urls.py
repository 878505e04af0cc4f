from django.urls import path

from attribution import views

app_name = "attribution"
urlpatterns = [
    path("", views.index, name="index"),
    path("inferences/<int:inference_id>/", views.inference, name="inference"),
    path("models/<slug:slug>/", views.model, name="model"),
    path("datanets/<slug:slug>/", views.datanet, name="datanet"),
    path(
        "datanets/<slug:slug>/contributions/<int:contribution_id>/decide/",
        views.contribution_decide,
        name="contribution_decide",
    ),
]
