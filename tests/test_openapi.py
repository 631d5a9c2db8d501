"""OpenAPI documents what the API really answers: a named schema for every JSON route, a media type for files."""

from __future__ import annotations

import pytest
from fastapi import FastAPI

from portal.web.api import routers

FILES = {"application/octet-stream", "image/png", "application/zip", "application/gzip", "application/dicom"}


@pytest.fixture(scope="module")
def openapi() -> dict:
    app = FastAPI()
    for router in routers():
        app.include_router(router)
    return app.openapi()


def operations(openapi: dict):
    for path, methods in openapi["paths"].items():
        for method, op in methods.items():
            if path.startswith("/api/v1/"):
                yield f"{method.upper()} {path}", op


def success(op: dict) -> dict:
    code = next(c for c in ("200", "201") if c in op["responses"])
    return op["responses"][code].get("content", {})


def test_the_routes_are_all_there(openapi):
    names = {name for name, _ in operations(openapi)}
    assert {
        "POST /api/v1/projects",
        "GET /api/v1/images/{iid}",
        "GET /api/v1/masks/{mid}.png",
        "GET /api/v1/projects/{pid}/export",
        "POST /api/v1/auth/token",
        "GET /api/v1/jobs/{jid}",
        "POST /api/v1/projects/{pid}/training-jobs",
        "GET /api/v1/projects/{pid}/models",
    } <= names


def test_every_json_route_answers_a_named_schema(openapi):
    missing = []
    for name, op in operations(openapi):
        content = success(op)
        if set(content) & FILES:
            continue
        schema = content.get("application/json", {}).get("schema", {})
        schema = schema.get("items", schema)
        # One model, or one of several named models (a job answers with its kind's shape).
        refs = [s.get("$ref") for s in schema.get("anyOf", [schema])]
        if not all(refs):
            missing.append(f"{name}: {schema or 'no schema'}")
            continue
        for ref in refs:
            if not openapi["components"]["schemas"][ref.rsplit("/", 1)[1]].get("properties"):
                missing.append(f"{name}: {ref} has no properties")
    assert not missing, missing


@pytest.mark.parametrize(
    "route, media_type",
    [
        ("GET /api/v1/masks/{mid}.npy", "application/octet-stream"),
        ("GET /api/v1/masks/{mid}.png", "image/png"),
        ("GET /api/v1/annotations/{aid}/revisions/{number}.npy", "application/octet-stream"),
        ("GET /api/v1/annotations/{aid}/revisions/{number}.png", "image/png"),
        ("GET /api/v1/projects/{pid}/export", "application/zip"),
    ],
)
def test_file_routes_declare_their_media_type(openapi, route, media_type):
    op = dict(operations(openapi))[route]
    assert media_type in success(op)
    assert "application/json" not in success(op)


def test_timestamps_are_documented_as_strings(openapi):
    """Rows' datetimes go out as ``isoformat()`` strings, and the schema says so."""
    image = openapi["components"]["schemas"]["ImagePublic"]["properties"]
    assert image["created_at"]["type"] == "string"
