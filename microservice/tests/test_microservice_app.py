"""The sample service answers what its users and Slipway's tests rely on."""


def test_health_reports_ok(client):
    """GET /health answers 200 with {"status": "ok"}."""
    response = client.get("/health")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok"}


def test_version_reports_the_built_version(make_client):
    """GET /version reports the version and commit the image was built with."""
    client = make_client({"SERVICE_VERSION": "1.4.0", "SERVICE_REVISION": "abc123"})
    response = client.get("/version")
    assert response.status_code == 200
    assert response.get_json() == {
        "service": "microservice",
        "version": "1.4.0",
        "revision": "abc123",
    }


def test_version_defaults_to_dev_outside_an_image(client):
    """Run from a checkout, the service says it is a dev build."""
    assert client.get("/version").get_json()["version"] == "dev"


def test_known_order_is_returned(client):
    """GET /orders/1 returns that order as JSON."""
    response = client.get("/orders/1")
    assert response.status_code == 200
    assert response.get_json()["id"] == 1


def test_unknown_order_is_a_json_404(client):
    """An order that does not exist answers 404 with a JSON error, not HTML."""
    response = client.get("/orders/999")
    assert response.status_code == 404
    assert response.get_json() == {"error": "not found"}
