"""The API key: required as a bearer token on every route of the app but /health and /ready,
found by walking the app's routes so that a new route is covered without being listed."""

import pytest

from .conftest import KEY, client_for

PUBLIC = {"/health", "/ready"}
# a valid body for the routes that take one; other routes are called with an empty object
BODIES = {"/v1/completions": {"prompt": "abc", "max_tokens": 2},
          "/v1/classify": {"input": "abc"}, "/v1/tokenize": {"input": "abc"}}


def calls(app):
    """(method, path) of every route of the app, documentation routes included."""
    for route in app.routes:
        for method in sorted(getattr(route, "methods", None) or {"GET"}):
            if method != "HEAD":
                yield method, route.path


@pytest.fixture
def guarded(lm_folder):
    with client_for(lm_folder, api_key=KEY) as client:
        yield client


def call(client, method, path, headers):
    return client.request(method, path, json=BODIES.get(path, {}) if method == "POST" else None,
                          headers=headers)


def test_every_route_but_health_and_ready_needs_the_key(guarded):
    routes = list(calls(guarded.app))
    assert {path for _, path in routes} >= {"/v1/completions", "/v1/models", "/info",
                                           "/openapi.json", *PUBLIC}
    for method, path in routes:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
            response = call(guarded, method, path, headers)
            if path in PUBLIC:
                assert response.status_code == 200, (method, path)
            else:
                assert response.status_code == 401, (method, path, headers)
                assert response.headers["www-authenticate"] == "Bearer"
        with_key = call(guarded, method, path, {"Authorization": f"Bearer {KEY}"})
        assert with_key.status_code != 401, (method, path)


def test_an_unknown_path_without_the_key_is_401_not_404(guarded):
    assert guarded.get("/nowhere").status_code == 401
    assert guarded.get("/nowhere", headers={"Authorization": f"Bearer {KEY}"}).status_code == 404


def test_without_a_key_set_no_route_needs_one(lm):
    for method, path in calls(lm.app):
        assert call(lm, method, path, {}).status_code != 401, (method, path)
