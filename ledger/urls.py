from django.urls import path

from ledger import views

app_name = "ledger"
urlpatterns = [
    path("", views.wallet, name="wallet"),
    path("receipts/<int:tx_id>/", views.receipt, name="receipt"),
    path("statement.csv", views.statement_csv, name="statement_csv"),
    path("withdrawals/", views.withdrawal_create, name="withdrawal_create"),
]
