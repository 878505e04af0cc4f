"""Partial (htmx) requests that need a log-in send the whole page to the log-in page."""

import pytest


@pytest.mark.django_db
def test_a_partial_request_after_logging_out_redirects_the_whole_page(client):
    response = client.get(
        "/wallet/?kind=settlement",
        HTTP_HX_REQUEST="true",
        HTTP_HX_CURRENT_URL="http://testserver/wallet/?page=2",
    )
    assert response.status_code == 200
    assert response["HX-Redirect"] == "/accounts/login/?next=%2Fwallet%2F%3Fpage%3D2"
    assert response.content == b""
    assert "HX-Request" in response["Vary"]


@pytest.mark.django_db
def test_a_partial_request_without_a_current_page_comes_back_to_its_own_address(client):
    response = client.get("/wallet/", HTTP_HX_REQUEST="true")
    assert response["HX-Redirect"] == "/accounts/login/?next=%2Fwallet%2F"


@pytest.mark.django_db
def test_a_whole_page_request_is_redirected_as_before(client):
    response = client.get("/wallet/")
    assert response.status_code == 302
    assert response["Location"] == "/accounts/login/?next=/wallet/"
    assert "HX-Redirect" not in response


@pytest.mark.django_db
def test_other_redirects_of_partial_requests_are_left_alone(client, cast):
    client.force_login(cast.owner)
    response = client.get("/datanets/new", HTTP_HX_REQUEST="true")
    assert response.status_code == 301
    assert "HX-Redirect" not in response
