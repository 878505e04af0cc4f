from django.urls import path

from ledger import api

urlpatterns = [
    path("balance/", api.BalanceView.as_view(), name="ledger-balance"),
    path("transactions/", api.TransactionListView.as_view(), name="ledger-transactions"),
    path("proofs/<int:tx_id>/", api.ProofView.as_view(), name="ledger-proof"),
    path("withdrawals/", api.WithdrawalListCreateView.as_view(), name="ledger-withdrawals"),
    path("withdrawals/<int:pk>/", api.WithdrawalDetailView.as_view(), name="ledger-withdrawal"),
]
