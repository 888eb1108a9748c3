"""The cluster folder, checked offline in seconds.

- The KubeRay manifests (cluster/kuberay/) against the KubeRay CRDs' OpenAPI schemas, the way the API
  server takes them: schema errors, fields it would prune as unknown, and no field under a CEL rule
  (which no offline check evaluates). The CRDs embed the full pod template schema, so the pod templates
  are checked the same way. The CRDs are read from `R2R_KUBERAY_CRDS` (default `../shared/kuberay-crds`
  beside the repository); without them those tests skip.
- The manifests against the repository: entry points and Serve import paths name real modules and
  builders, config paths real files that load; each config's placement plan fits the cluster that runs
  it; serveConfigV2 parses with Ray Serve's own `ServeDeploySchema`, with no field it would ignore.
- cluster/runtime_env.yaml through Ray's own validation and working-dir packaging.

One integration test deploys the RayService's pool application from its Serve config, as KubeRay does.
"""
from __future__ import annotations

import copy
import functools
import inspect
import json
import os
import re
import shlex
import socket
import time
import typing
import zipfile
from importlib.util import find_spec
from pathlib import Path

import httpx
import jsonschema
import pytest
import yaml

from actors.plan import Group, fits, plan_groups
from core.config import Config, load_config

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
KUBERAY = CLUSTER / "kuberay"
MANIFESTS = {"raycluster.yaml": "RayCluster", "rayjob.yaml": "RayJob", "rayservice.yaml": "RayService"}
CRD_FILES = {"RayCluster": "ray.io_rayclusters.yaml", "RayJob": "ray.io_rayjobs.yaml",
             "RayService": "ray.io_rayservices.yaml"}
OBJECT_META = {"name", "namespace", "labels", "annotations"}  # what a manifest may set at metadata
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def crds_dir() -> Path:
    return Path(os.environ.get("R2R_KUBERAY_CRDS", ROOT.parent / "shared" / "kuberay-crds"))


@functools.cache
def crd_schema(kind: str) -> dict:
    """The v1 openAPIV3Schema of KubeRay's CRD for `kind`."""
    path = crds_dir() / CRD_FILES[kind]
    if not path.is_file():
        pytest.skip(f"KubeRay CRD not found: {path} (set R2R_KUBERAY_CRDS to the folder of ray.io_*.yaml)")
    crd = yaml.load(path.read_text(), Loader=YAML_LOADER)
    assert crd["spec"]["names"]["kind"] == kind, f"{path} is not the {kind} CRD"
    version = next((v for v in crd["spec"]["versions"] if v["name"] == "v1"), None)
    assert version is not None and version["served"], f"{path}: no served v1 version"
    return version["schema"]["openAPIV3Schema"]


@functools.cache
def manifest(name: str) -> dict:
    docs = [d for d in yaml.safe_load_all((KUBERAY / name).read_text()) if d is not None]
    assert len(docs) == 1, f"{name}: expected one resource, got {len(docs)}"
    return docs[0]


def cluster_spec(doc: dict) -> dict:
    """The RayCluster spec a manifest runs on (its own, or the one a RayJob/RayService creates)."""
    return {"RayCluster": lambda s: s, "RayJob": lambda s: s["rayClusterSpec"],
            "RayService": lambda s: s["rayClusterConfig"]}[doc["kind"]](doc["spec"])


def groups(spec: dict) -> list[tuple[str, dict, int]]:
    """(name, group spec, node count) of the head and every worker group."""
    return [("head", spec["headGroupSpec"], 1)] + [(g["groupName"], g, g["replicas"]) for g in spec["workerGroupSpecs"]]


def ray_container(group: dict) -> dict:
    return group["template"]["spec"]["containers"][0]  # KubeRay runs Ray in the first container


def runtime_env_file() -> dict:
    return yaml.safe_load((CLUSTER / "runtime_env.yaml").read_text())


# -- structural checks: what the API server would reject or drop ------------------------------------------
def schema_errors(doc: dict, schema: dict) -> list[str]:
    """jsonschema's errors (OpenAPI v3.0 schemas are a JSON Schema draft-4 dialect; x-kubernetes-* are
    extensions it ignores, and formats are not asserted)."""
    validator = jsonschema.Draft4Validator(schema)
    return [f"{'.'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}" for e in validator.iter_errors(doc)]


def _children(value, schema: dict, path: str):
    """(child value, its schema or None when the schema does not know it, child path)."""
    if isinstance(value, dict):
        props, extra = schema.get("properties", {}), schema.get("additionalProperties")
        for key, sub in value.items():
            known = props.get(key, extra if isinstance(extra, dict) else None)
            yield sub, known, f"{path}.{key}"
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, sub in enumerate(value):
            yield sub, schema["items"], f"{path}[{i}]"


def unchecked_fields(value, schema: dict, path: str) -> list[str]:
    """Fields the API server would prune (unknown to a structural schema that does not preserve unknown
    fields), and fields under a CEL rule (x-kubernetes-validations: not evaluated offline)."""
    out = [f"{path}: under a CEL rule {schema['x-kubernetes-validations']}"] if "x-kubernetes-validations" in schema else []
    keeps_unknown = schema.get("x-kubernetes-preserve-unknown-fields") or schema.get("additionalProperties") is True
    for sub, known, sub_path in _children(value, schema, path):
        if known is not None:
            out += unchecked_fields(sub, known, sub_path)
        elif not keeps_unknown:
            out.append(f"{sub_path}: unknown field, pruned by the API server")
    return out


def manifest_problems(doc: dict, kind: str) -> list[str]:
    """Everything the API server would reject or silently change in `doc`, a `kind` resource."""
    problems = []
    if doc.get("apiVersion") != "ray.io/v1" or doc.get("kind") != kind:
        problems.append(f"apiVersion/kind: expected ray.io/v1 {kind}, got {doc.get('apiVersion')} {doc.get('kind')}")
    problems += [f"{k}: unknown top-level field" for k in set(doc) - {"apiVersion", "kind", "metadata", "spec"}]
    meta = doc.get("metadata", {})
    problems += [f"metadata.{k}: not an ObjectMeta field a manifest sets" for k in set(meta) - OBJECT_META]
    if not (isinstance(meta.get("name"), str) and DNS_LABEL.match(meta["name"]) and len(meta["name"]) <= 63):
        problems.append(f"metadata.name: {meta.get('name')!r} is not a DNS-1123 label")
    schema = crd_schema(kind)
    problems += schema_errors(doc, schema)
    problems += unchecked_fields(doc.get("spec", {}), schema["properties"]["spec"], "spec")
    return problems


@pytest.mark.parametrize("name", MANIFESTS)
def test_manifest_is_valid_for_its_crd(name):
    problems = manifest_problems(manifest(name), MANIFESTS[name])
    assert not problems, f"{name}:\n  " + "\n  ".join(problems)


def test_the_structural_check_catches_what_the_api_server_would():
    """The checker is not vacuous: each planted fault is reported, at its path."""
    doc = copy.deepcopy(manifest("raycluster.yaml"))
    head = doc["spec"]["headGroupSpec"]
    head["template"]["spec"]["containers"][0]["resourcez"] = {}  # a pod template typo: pruned
    doc["spec"]["workerGroupSpecs"][0]["replica"] = 2  # a CRD field typo: pruned
    doc["spec"]["workerGroupSpecs"][1]["replicas"] = "two"  # a wrong type: rejected
    del doc["spec"]["workerGroupSpecs"][2]["groupName"]  # a required field: rejected
    doc["spec"]["managedBy"] = "someone"  # a CEL-guarded field
    problems = "\n".join(manifest_problems(doc, "RayCluster"))
    for expected in ["spec.headGroupSpec.template.spec.containers[0].resourcez: unknown field",
                     "spec.workerGroupSpecs[0].replica: unknown field",
                     "spec.workerGroupSpecs.1.replicas: 'two' is not of type 'integer'",
                     "'groupName' is a required property", "spec.managedBy: under a CEL rule"]:
        assert expected in problems, f"not caught: {expected}\n{problems}"


# -- what KubeRay's operator checks beyond the schema, and consistency across the folder ------------------
def _custom_resources(params: dict) -> dict[str, float]:
    """rayStartParams `resources` in KubeRay's quoting, '"{\\"pool\\": 1}"': KubeRay pastes it into the
    shell's `ray start --resources=...`, where the double quotes go and `\\"` becomes `"`."""
    raw = params.get("resources")
    if raw is None:
        return {}
    assert raw.startswith('"') and raw.endswith('"'), f"resources {raw!r}: KubeRay wants the JSON in double quotes"
    return json.loads(raw[1:-1].replace('\\"', '"'))


@pytest.mark.parametrize("name", MANIFESTS)
def test_kuberay_semantics_and_one_image(name):
    spec = cluster_spec(manifest(name))
    names = [g[0] for g in groups(spec)]
    assert len(set(names)) == len(names), f"{name}: duplicate group names {names}"
    ray_image = re.search(r"^ARG RAY_IMAGE=rayproject/ray:([0-9.]+)-", (CLUSTER / "Dockerfile").read_text(), re.M)
    assert ray_image and spec["rayVersion"] == ray_image.group(1), \
        f"{name}: rayVersion {spec['rayVersion']} is not the Dockerfile's Ray ({ray_image and ray_image.group(1)})"
    images = set()
    for group_name, group, _ in groups(spec):
        if group_name != "head":
            assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], f"{name}: {group_name} replicas"
        assert all(isinstance(v, str) for v in group.get("rayStartParams", {}).values()), \
            f"{name}: {group_name}: rayStartParams values must be strings"
        _custom_resources(group.get("rayStartParams", {}))
        images |= {c["image"] for c in group["template"]["spec"]["containers"]}
    assert len(images) == 1, f"{name}: one image (cluster/Dockerfile's) for every pod, got {images}"


def test_dockerfile_copies_what_exists():
    sources = re.findall(r"^COPY (?:--\S+ )*(.+) \S+$", (CLUSTER / "Dockerfile").read_text(), re.M)
    missing = [s for line in sources for s in line.split() if not (ROOT / s).exists()]
    assert sources and not missing, f"Dockerfile COPY sources missing: {missing}"


def test_rayjob_cleans_up_and_retries_from_checkpoints():
    spec = manifest("rayjob.yaml")["spec"]
    assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] > 0
    assert "clusterSelector" not in spec  # a cluster of its own, deleted after the job
    if spec.get("backoffLimit", 0) > 0:  # a retry must continue the run, not wipe its checkpoints
        assert "--resume" in shlex.split(spec["entrypoint"])


# -- the manifests against the repository ----------------------------------------------------------------
def entrypoint_config(entrypoint: str) -> tuple[str, list[str], Config]:
    """(module, argv, config) of `python -m MODULE --config PATH [--set k=v ...] [flags]`."""
    argv = shlex.split(entrypoint)
    assert argv[:2] == ["python", "-m"], f"entrypoint {entrypoint!r}: expected `python -m MODULE ...`"
    module, args = argv[2], argv[3:]
    spec = find_spec(module)
    assert spec is not None and spec.origin and Path(spec.origin).is_relative_to(ROOT), \
        f"entrypoint module {module} is not in the repository"
    config = args[args.index("--config") + 1]
    assert (ROOT / config).is_file(), f"entrypoint config {config} is not a file in the repository"
    sets = [args[i + 1] for i, a in enumerate(args) if a == "--set"]
    return module, args, load_config(ROOT / config, sets)


def test_rayjob_entrypoint_runs_the_training_cli(capsys):
    """The entrypoint's module, config and overrides, through the training CLI's own parser (its dry run:
    the plan, offline)."""
    module, args, cfg = entrypoint_config(manifest("rayjob.yaml")["spec"]["entrypoint"])
    assert module == "pipelines.train"
    assert cfg.run_dir.startswith("s3://"), "the job's outputs must outlive its cluster: run_dir in a bucket"
    from pipelines.train import main

    with pytest.raises(SystemExit) as done:
        main([*args, "--dry-run"])
    assert done.value.code == 0, capsys.readouterr().out
    assert "placement plan:" in capsys.readouterr().out


def _env(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def test_wandb_online_takes_its_key_from_a_secret():
    job = manifest("rayjob.yaml")
    _, _, cfg = entrypoint_config(job["spec"]["entrypoint"])
    assert cfg.wandb.mode == "online"
    head = ray_container(cluster_spec(job)["headGroupSpec"])  # the driver runs on the head
    key = _env(head).get("WANDB_API_KEY", {})
    assert "secretKeyRef" in key.get("valueFrom", {}), "WANDB_API_KEY must come from a Secret (valueFrom.secretKeyRef)"
    assert "value" not in key


@pytest.mark.parametrize("name", MANIFESTS)
def test_every_pod_gets_the_secret_and_the_data_it_needs(name):
    """API keys (OPENAI_API_KEY, ...) and bucket credentials reach every Ray process from the Secret; the
    benchmark folder R2R_DATA is mounted wherever a training run's actors may load it."""
    doc = manifest(name)
    data = runtime_env_file()["env_vars"]["R2R_DATA"]
    for group_name, group, _ in groups(cluster_spec(doc)):
        container = ray_container(group)
        assert any("secretRef" in e for e in container.get("envFrom", [])), f"{name}: {group_name}: no Secret in envFrom"
        if doc["kind"] != "RayService":
            mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
            assert data in mounts, f"{name}: {group_name}: R2R_DATA ({data}) is not mounted"


def test_rayjob_runtime_env_is_valid_and_matches_the_submitted_one():
    from ray.runtime_env import RuntimeEnv

    env = yaml.safe_load(manifest("rayjob.yaml")["spec"]["runtimeEnvYAML"])
    RuntimeEnv(**env)
    assert env["env_vars"] == runtime_env_file()["env_vars"], "one set of env vars: cluster/runtime_env.yaml's"


def _known_fields(model: type) -> set[str]:
    return {f.alias or name for name, f in model.model_fields.items()} | set(model.model_fields)


def _nested_model(annotation) -> type | None:
    """The pydantic model inside an annotation such as Optional[List[Model]], if any."""
    from pydantic import BaseModel

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return next((m for a in typing.get_args(annotation) if (m := _nested_model(a)) is not None), None)


def ignored_serve_fields(data, model: type, path: str) -> list[str]:
    """Fields Serve's schema would silently ignore (it does not forbid extra fields)."""
    out = []
    for key, value in data.items():
        if key not in _known_fields(model):
            out.append(f"{path}.{key}")
            continue
        field = model.model_fields.get(key) or next(f for f in model.model_fields.values() if f.alias == key)
        sub = _nested_model(field.annotation)
        if sub is not None and key not in ("args", "runtime_env"):  # free-form by design
            for i, item in enumerate(value if isinstance(value, list) else [value]):
                if isinstance(item, dict):
                    out += ignored_serve_fields(item, sub, f"{path}.{key}[{i}]")
    return out


def serve_config() -> dict:
    return yaml.safe_load(manifest("rayservice.yaml")["spec"]["serveConfigV2"])


def test_serve_config_parses_with_rays_schema():
    from ray.serve.schema import ServeDeploySchema

    config = serve_config()
    ServeDeploySchema.model_validate(config)
    assert not ignored_serve_fields(config, ServeDeploySchema, "serveConfigV2")
    assert {a["name"] for a in config["applications"]} == {"pool", "router"}


def test_the_serve_checker_finds_ignored_fields():
    from ray.serve.schema import ServeDeploySchema

    config = copy.deepcopy(serve_config())
    config["applications"][0]["route"] = "/x"
    config["applications"][0]["deployments"] = [{"name": "PoolHost", "num_replica": 2}]
    assert ignored_serve_fields(config, ServeDeploySchema, "c") == \
        ["c.applications[0].route", "c.applications[0].deployments[0].num_replica"]


@pytest.mark.parametrize("app", [a["name"] for a in serve_config()["applications"]])
def test_serve_apps_name_real_builders_and_configs(app):
    from ray import serve

    spec = next(a for a in serve_config()["applications"] if a["name"] == app)
    module_name, attr = spec["import_path"].split(":")
    module = __import__(module_name, fromlist=[attr])
    assert Path(module.__file__).is_relative_to(ROOT)
    args = spec["args"]
    assert (ROOT / args["config"]).is_file(), f"{app}: config {args['config']} is not a file in the repository"
    load_config(ROOT / args["config"], args.get("set"))
    if not hasattr(module, attr):
        pytest.skip(f"{spec['import_path']} is not in this checkout yet")
    builder = getattr(module, attr)
    if app == "pool":  # builds without starting anything: the app object Serve would deploy
        assert isinstance(builder({**args, "config": str(ROOT / args["config"])}), serve.Application)
    else:  # its router folder is in a bucket: check the builder's signature only
        assert callable(builder) and len(inspect.signature(builder).parameters) >= 1


# -- placement: each config's plan fits the cluster that runs it ------------------------------------------
def _cpus(quantity) -> float:
    text = str(quantity)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def ray_nodes(spec: dict) -> list[dict[str, float]]:
    """Each Ray node's resources as KubeRay starts it: CPUs and GPUs from rayStartParams, else the Ray
    container's limits (else requests); custom resources from rayStartParams."""
    nodes = []
    for _, group, count in groups(spec):
        params, res = group.get("rayStartParams", {}), ray_container(group).get("resources", {})
        limits = {**res.get("requests", {}), **res.get("limits", {})}
        node = {"CPU": _cpus(params.get("num-cpus", limits.get("cpu", 0))),
                "GPU": float(params.get("num-gpus", limits.get("nvidia.com/gpu", 0))),
                **_custom_resources(params)}
        nodes += [dict(node) for _ in range(count)]
    return nodes


def demands(cfg: Config) -> list[Group]:
    """The dry run's plan, plus the zoo's model servers and the pool's dispatcher (the plan covers the
    pool's explicit models only), in the order a run starts them: the pool first."""
    pool = []
    if cfg.pool.use_zoo:
        pool += [Group(f"pool:{m.name}#{r}", [cfg.pool.server.bundle()], "PACK")
                 for m in cfg.zoo.models for r in range(cfg.pool.replicas)]
    if cfg.pool.dispatcher.bundle():
        pool.append(Group("pool dispatcher", [cfg.pool.dispatcher.bundle()], "PACK"))
    planned, _ = plan_groups(cfg)
    return pool + planned


def unplaced(wanted: list[Group], nodes: list[dict[str, float]]) -> list[str]:
    free = [dict(n) for n in nodes]
    return [f"{g.name}: {len(g.bundles)} x {g.bundles[0]} {g.strategy}" for g in wanted if not fits(g.bundles, g.strategy, free)]


@pytest.mark.parametrize("name, config", [("raycluster.yaml", "configs/cluster-example.yaml"),
                                          ("rayjob.yaml", None), ("rayservice.yaml", None)])
def test_the_config_fits_the_cluster(name, config):
    doc = manifest(name)
    if doc["kind"] == "RayJob":
        cfg = entrypoint_config(doc["spec"]["entrypoint"])[2]
        wanted = demands(cfg)
    elif doc["kind"] == "RayService":  # the pool application's model servers
        pool = next(a for a in serve_config()["applications"] if a["name"] == "pool")["args"]
        wanted = [g for g in demands(load_config(ROOT / pool["config"], pool.get("set"))) if g.name.startswith("pool")]
    else:
        wanted = demands(load_config(ROOT / config))
    nodes = ray_nodes(cluster_spec(doc))
    assert wanted and not unplaced(wanted, nodes), f"{name}: does not fit {nodes}: {unplaced(wanted, nodes)}"


def test_the_fit_check_refuses_a_cluster_too_small():
    spec = copy.deepcopy(cluster_spec(manifest("raycluster.yaml")))
    for g in spec["workerGroupSpecs"]:
        if g["groupName"] == "learner-gpu":
            g["rayStartParams"]["num-gpus"] = "2"  # 4 STRICT_PACK learner ranks no longer fit one node
    assert unplaced(demands(load_config(ROOT / "configs/cluster-example.yaml")), ray_nodes(spec)) == \
        ["learner: 4 x {'CPU': 2.0, 'GPU': 1.0, 'learner': 0.1} STRICT_PACK"]


# -- the runtime env of `ray job submit` -----------------------------------------------------------------
def test_runtime_env_is_a_valid_ray_runtime_env():
    from ray.runtime_env import RuntimeEnv

    env = RuntimeEnv(**runtime_env_file())
    assert env["working_dir"] == "."
    assert "py_executable" not in env and "conda" not in env  # the cluster's python, with pip on top


def test_runtime_env_installs_the_projects_dependencies_but_not_ray():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    want = {d for d in project["dependencies"] if not re.match(r"ray\b", d)} | set(project["optional-dependencies"]["s3"])
    assert set(runtime_env_file()["pip"]) == want, \
        "cluster/runtime_env.yaml pip: pyproject.toml's dependencies, less ray, plus the s3 extra (run_dir on S3)"


def _package(root: Path, out: Path, runtime_env: dict, include_gitignore: bool) -> set[str]:
    """The members of the working-dir package Ray uploads for `runtime_env`, built by Ray's own code."""
    from ray._private.runtime_env.packaging import create_package
    from ray._private.runtime_env.working_dir import upload_working_dir_if_needed

    def build(working_dir, excludes, is_file=False):
        create_package(working_dir, out, include_gitignore=include_gitignore, excludes=excludes)

    upload_working_dir_if_needed({**runtime_env, "working_dir": str(root)}, include_gitignore, upload_fn=build)
    return set(zipfile.ZipFile(out).namelist())


def test_runtime_env_excludes_leave_runs_venvs_and_git_behind(tmp_path, monkeypatch):
    """With .gitignore ignored (RAY_RUNTIME_ENV_IGNORE_GITIGNORE=1) and Ray's default excludes off, the
    runtime env's own excludes keep runs/, the venvs and .git out; same-named files deeper stay in."""
    tree = tmp_path / "repo"
    for rel in ["pipelines/train.py", "pipelines/runs.py", "configs/paper.yaml", "runs/tiny/zoo/w.bin",
                ".venv/lib/x.py", ".venv-vllm/lib/x.py", ".git/HEAD", "wandb/run/x.log", "core/__pycache__/c.pyc"]:
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_text("x")
    monkeypatch.setenv("RAY_OVERRIDE_RUNTIME_ENV_DEFAULT_EXCLUDES", "")
    members = _package(tree, tmp_path / "pkg.zip", runtime_env_file(), include_gitignore=False)
    assert members == {"pipelines/train.py", "pipelines/runs.py", "configs/paper.yaml"}


def test_the_repository_packages_without_runs_or_venvs(tmp_path):
    """The package `ray job submit --runtime-env cluster/runtime_env.yaml` uploads from this checkout."""
    out = tmp_path / "pkg.zip"
    members = _package(ROOT, out, runtime_env_file(), include_gitignore=True)
    assert {"pipelines/train.py", "pipelines/runs.py", "configs/paper.yaml", "pyproject.toml"} <= members
    bad = [m for m in members if m.split("/")[0] in {"runs", ".git", "wandb"} or m.startswith(".venv")]
    assert not bad, bad[:5]
    assert out.stat().st_size < 20 * 2**20, f"working-dir package {out.stat().st_size / 2**20:.0f} MiB"


# -- the RayService's pool application, deployed from its Serve config -------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.integration
@pytest.mark.timeout(600)
def test_the_pool_app_deploys_from_the_serve_config(zoo_config, ray_local):
    """serveConfigV2's pool application, deployed the way KubeRay deploys it (a Serve config; Serve builds
    the app in a task of its own), on the test zoo: its pool outlives the build and answers."""
    from ray import serve
    from ray.serve._private.api import serve_start
    from ray.serve.schema import ServeDeploySchema

    config = serve_config()
    pool = next(a for a in config["applications"] if a["name"] == "pool")
    pool["args"] = {"config": str(ROOT / "configs" / "test.yaml"), "set": [f"run_dir={zoo_config.run_dir}"]}
    port = _free_port()
    client = serve_start(http_options={"host": "127.0.0.1", "port": port})
    try:
        client.deploy_apps(ServeDeploySchema.model_validate({"applications": [pool]}))
        deadline = time.monotonic() + 300
        while (status := serve.status().applications.get("pool")) is None or status.status not in ("RUNNING", "DEPLOY_FAILED"):
            assert time.monotonic() < deadline, f"pool app not running: {status}"
            time.sleep(1)
        assert status.status == "RUNNING", status.message
        base = f"http://127.0.0.1:{port}{pool['route_prefix']}/v1"
        ids = [m["id"] for m in httpx.get(f"{base}/models", timeout=30).json()["data"]]
        assert ids and set(ids) == {m.name for m in zoo_config.zoo.models}
        reply = httpx.post(f"{base}/completions", timeout=120,
                           json={"model": ids[-1], "prompt": "jump twice =", "max_tokens": 4, "temperature": 0})
        assert reply.status_code == 200, reply.text
        assert reply.json()["usage"]["completion_tokens"] >= 1
    finally:
        serve.shutdown()
