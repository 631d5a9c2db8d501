"""docker-compose.yml and the Dockerfile, checked without Docker.

Nothing here builds or runs a container. The tests load the compose file with
PyYAML and check it against the package itself. Each command must parse with the
real ``medsam`` CLI parser, and each ``MEDSAM_*`` variable must be a field of
``Settings``. So a renamed flag or setting breaks this test, not a deployment.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml  # PyYAML, a dev extra: a missing install fails here and is not skipped

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"

REQUIRED_SERVICES = {
    "postgres",
    "redis",
    "minio",
    "migrate",
    "portal",
    "worker-inference",
    "worker-training",
    "flower",
}
GPU_WORKERS = ("worker-inference", "worker-training")
CELERY_SUBCOMMANDS = {"worker", "flower", "inspect"}
ENV_PREFIX = "MEDSAM_"


@pytest.fixture(scope="module")
def compose() -> dict:
    # safe_load resolves anchors, aliases and `<<` merge keys, like Compose does.
    doc = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    assert isinstance(doc, dict), "docker-compose.yml is not a mapping"
    return doc


@pytest.fixture(scope="module")
def services(compose) -> dict:
    svcs = compose.get("services")
    assert isinstance(svcs, dict) and svcs, "no services"
    return svcs


def _builds_our_image(svc: dict) -> bool:
    return "build" in svc


def _argv(command) -> list[str]:
    """A Compose ``command`` as argv: a string is split like a shell would, a list is taken as is."""
    if isinstance(command, str):
        return shlex.split(command)
    assert isinstance(command, list) and all(isinstance(a, str) for a in command), command
    return list(command)


def _env_items(env) -> list[tuple[str, object]]:
    """Both forms of ``environment``: a mapping, or a list of ``KEY=VALUE`` / ``KEY`` strings."""
    if env is None:
        return []
    if isinstance(env, dict):
        return [(str(k), v) for k, v in env.items()]
    assert isinstance(env, list), f"environment must be a mapping or a list, got {type(env).__name__}"
    items = []
    for entry in env:
        key, _, value = str(entry).partition("=")
        items.append((key, value))
    return items


def _all_medsam_env_keys(compose: dict) -> dict[str, str]:
    """Every MEDSAM_* variable the file sets, mapped to where it is set.

    This covers each service's ``environment`` (both forms) and every ``x-``
    extension field, searched at any depth. An anchor that no service uses is
    still checked.
    """
    found: dict[str, str] = {}

    def visit(node, where: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "environment":
                    for env_key, _ in _env_items(value):
                        if env_key.startswith(ENV_PREFIX):
                            found.setdefault(env_key, f"{where}.environment")
                elif isinstance(key, str) and key.startswith(ENV_PREFIX):
                    found.setdefault(key, where)  # an env mapping kept as an x- anchor
                visit(value, f"{where}.{key}")
        elif isinstance(node, list):
            for i, item in enumerate(node):
                if isinstance(item, str) and re.match(rf"^{ENV_PREFIX}[A-Z0-9_]+=", item):
                    found.setdefault(item.partition("=")[0], f"{where}[{i}]")
                visit(item, f"{where}[{i}]")

    for top_key, value in compose.items():
        if top_key == "services" or str(top_key).startswith("x-"):
            visit(value, str(top_key))
    return found


def test_required_services_exist(services):
    missing = REQUIRED_SERVICES - set(services)
    assert not missing, f"missing services: {sorted(missing)}"


@pytest.mark.parametrize("name", GPU_WORKERS)
def test_workers_reserve_an_nvidia_gpu(services, name):
    devices = services[name]["deploy"]["resources"]["reservations"]["devices"]
    assert any(
        d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) and (d.get("count") or d.get("device_ids"))
        for d in devices
    ), f"{name} has no NVIDIA GPU reservation: {devices}"


def test_each_service_builds_our_dockerfile_or_pins_an_upstream_image(services):
    for name, svc in services.items():
        if _builds_our_image(svc):
            build = svc["build"]
            context = build if isinstance(build, str) else build.get("context", ".")
            dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
            assert (ROOT / context).resolve() == ROOT, f"{name}: build context {context!r} is not the repo root"
            assert (ROOT / context / dockerfile).resolve() == DOCKERFILE, f"{name}: builds {dockerfile!r}"
        else:
            image = svc.get("image")
            assert isinstance(image, str) and image, f"{name}: neither build nor image"
            tag = image.rsplit("/", 1)[-1].partition(":")[2]
            assert tag and tag != "latest", f"{name}: pin the upstream image's tag, got {image!r}"


def test_medsam_services_share_one_image(services):
    ours = {name: svc.get("image") for name, svc in services.items() if _builds_our_image(svc)}
    assert {"migrate", "portal", "worker-inference", "worker-training", "flower"} <= set(ours)
    assert len(set(ours.values())) == 1, f"one image for every medsam process, got {ours}"


def test_depends_on_names_existing_services(services):
    for name, svc in services.items():
        deps = svc.get("depends_on") or {}
        dep_names = list(deps) if isinstance(deps, (dict, list)) else []
        for dep in dep_names:
            assert dep in services, f"{name} depends on unknown service {dep!r}"
            assert dep != name, f"{name} depends on itself"
            if isinstance(deps, dict):
                condition = deps[dep].get("condition", "service_started")
                if condition == "service_healthy":
                    assert "healthcheck" in services[dep], (
                        f"{name} waits for {dep} to be healthy; it has no healthcheck"
                    )


def test_depends_on_has_no_cycle(services):
    graph = {name: list(svc.get("depends_on") or {}) for name, svc in services.items()}
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def walk(node: str, path: list[str]) -> None:
        if state.get(node) == 2:
            return
        assert state.get(node) != 1, f"depends_on cycle: {' -> '.join(path + [node])}"
        state[node] = 1
        for dep in graph.get(node, []):
            walk(dep, path + [node])
        state[node] = 2

    for node in graph:
        walk(node, [])


def test_long_running_medsam_services_wait_for_migrate(services):
    for name in ("portal", "worker-inference", "worker-training", "flower"):
        deps = services[name].get("depends_on") or {}
        assert isinstance(deps, dict) and "migrate" in deps, f"{name} must wait for migrate"
        assert deps["migrate"]["condition"] == "service_completed_successfully", name
    assert services["migrate"].get("restart", "no") in ("no", False), "migrate is one-shot: restart 'no'"


def test_named_volumes_are_declared(compose, services):
    declared = set(compose.get("volumes") or {})
    used = set()
    for name, svc in services.items():
        for vol in svc.get("volumes") or []:
            source = vol.get("source") if isinstance(vol, dict) else str(vol).split(":", 1)[0]
            kind = vol.get("type", "volume") if isinstance(vol, dict) else None
            is_named = source and not source.startswith(("/", ".", "~", "$")) and kind in (None, "volume")
            if is_named:
                assert source in declared, f"{name} mounts undeclared volume {source!r}"
                used.add(source)
    for name in ("postgres", "redis", "minio"):
        assert any(not str(v).startswith(("/", ".")) for v in services[name].get("volumes") or []), (
            f"{name} keeps its data in a named volume"
        )
    assert declared <= used, f"declared but unused volumes: {sorted(declared - used)}"


def test_health_checks(services):
    for name in ("postgres", "redis", "minio", "portal", "worker-inference", "worker-training", "flower"):
        test = services[name].get("healthcheck", {}).get("test")
        assert test, f"{name} has no healthcheck"
    assert "pg_isready" in str(services["postgres"]["healthcheck"]["test"])
    assert "redis-cli ping" in str(services["redis"]["healthcheck"]["test"])
    assert "/healthz" in str(services["portal"]["healthcheck"]["test"])


def test_redis_persists(services):
    argv = _argv(services["redis"]["command"])
    assert argv[argv.index("--appendonly") + 1] == "yes"


def test_commands_are_real_entry_points(services):
    from portal.cli import build_parser

    for name, svc in services.items():
        if not _builds_our_image(svc):
            continue  # upstream images run their own programs
        argv = _argv(svc.get("command") or "medsam serve --no-workers")  # the Dockerfile's CMD
        program = argv[0]
        if program == "medsam":
            try:
                build_parser().parse_args(argv[1:])
            except SystemExit as exc:  # argparse exits on an unknown sub-command or flag
                pytest.fail(f"{name}: `{shlex.join(argv)}` is not a valid medsam command (exit {exc.code})")
        elif program == "celery":
            assert argv[1:3] == ["-A", "workers"], f"{name}: celery must load the app with -A workers: {argv}"
            sub = next((a for a in argv[3:] if not a.startswith("-")), None)
            assert sub in CELERY_SUBCOMMANDS, f"{name}: unexpected celery sub-command {sub!r}"
            assert (ROOT / "workers" / "__init__.py").is_file(), "the workers package is missing"
        else:
            pytest.fail(f"{name}: runs {program!r}, which is not an entry point of this package")


def test_worker_queues(services):
    for name, queue in (("worker-inference", "inference"), ("worker-training", "training")):
        argv = _argv(services[name]["command"])
        assert argv[:2] == ["medsam", "worker"], argv
        assert argv[argv.index("--queues") + 1] == queue, argv


def test_every_medsam_variable_is_a_setting(compose):
    from portal.store.settings import Settings

    keys = _all_medsam_env_keys(compose)
    assert "MEDSAM_DATABASE_URL" in keys and "MEDSAM_BROKER_URL" in keys, "the shared env was not found"
    unknown = {k: where for k, where in keys.items() if k[len(ENV_PREFIX) :].lower() not in Settings.model_fields}
    assert not unknown, f"MEDSAM_* variables that Settings does not read: {unknown}"


def test_env_walker_sees_both_forms():
    doc = yaml.safe_load(
        """
x-env: &env
  MEDSAM_FROM_ANCHOR: "1"
services:
  a:
    environment:
      <<: *env
      MEDSAM_FROM_MAPPING: "1"
  b:
    environment: ["MEDSAM_FROM_LIST=1", "PLAIN=1", "MEDSAM_BARE"]
"""
    )
    assert set(_all_medsam_env_keys(doc)) == {
        "MEDSAM_FROM_ANCHOR",
        "MEDSAM_FROM_MAPPING",
        "MEDSAM_FROM_LIST",
        "MEDSAM_BARE",
    }


def test_dockerfile_installs_the_package_and_downloads_no_weights():
    assert DOCKERFILE.is_file(), "Dockerfile is missing"
    text = DOCKERFILE.read_text(encoding="utf-8")
    # Only instructions count, not comments.
    body = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    assert re.search(r"pip install\b[^\n]*(?:-e\s+)?\.(\s|$)", body), "the Dockerfile does not pip install the package"
    assert "playwright install" not in body
    for line in body.splitlines():
        if re.search(r"\b(wget|curl)\b", line):
            assert not re.search(r"\.(pth|pt|ckpt|safetensors|onnx)\b", line), f"downloads weights: {line.strip()}"
    assert re.search(r"^\s*USER\s+(?!root\b|0\b)\S+", body, re.M), "the image must run as a non-root user"
    assert re.search(r"MEDSAM_DATA_DIR=/data\b", body), "MEDSAM_DATA_DIR must be /data"
