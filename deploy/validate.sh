#!/usr/bin/env bash
# Checks Gantry's deployment files without Docker or a cluster:
#   - every YAML file under k8s/ and deploy/ parses;
#   - every kustomization.yaml names resources, patches and generator inputs that exist, and
#     its patches aim at objects that its resources define (JSON-patch paths included);
#   - every Deployment and StatefulSet has readiness and liveness probes, CPU and memory
#     requests, and runs as non-root;
#   - deploy/docker-compose.yml builds from Dockerfiles that exist, whose COPY sources exist,
#     gives every service a health check and waits only on services that have one;
#   - the shell scripts in deploy/ parse.
# Needs python3 only: PyYAML is installed into a virtual environment under
# ${GANTRY_TOOLS_DIR:-$HOME/.cache/gantry}/yaml-venv on first use. Exits non-zero on any failure.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${GANTRY_TOOLS_DIR:-$HOME/.cache/gantry}/yaml-venv"

command -v python3 >/dev/null || { echo "validate: python3 is required" >&2; exit 1; }
if ! "$venv/bin/python" -c 'import yaml' 2>/dev/null; then
    echo "validate: installing PyYAML into $venv"
    mkdir -p "$(dirname "$venv")"
    [ -x "$venv/bin/python" ] || python3 -m venv "$venv" \
        || { echo "validate: python3 -m venv failed (Debian: apt-get install python3-venv)" >&2; exit 1; }
    "$venv/bin/pip" install --quiet --disable-pip-version-check pyyaml \
        || { echo "validate: pip install pyyaml failed" >&2; exit 1; }
fi

status=0
for script in "$repo"/deploy/*.sh; do
    bash -n "$script" || { echo "FAIL ${script#"$repo"/}: bash -n found a syntax error" >&2; status=1; }
done

"$venv/bin/python" - "$repo" <<'PY' || status=1
import os
import re
import sys

import yaml

REPO = sys.argv[1]
failures = []
checks = 0


def rel(path):
    return os.path.relpath(path, REPO)


def fail(where, message):
    failures.append(f"{rel(where) if os.path.isabs(where) else where}: {message}")


def check(ok, where, message):
    global checks
    checks += 1
    if not ok:
        fail(where, message)
    return ok


# --- every YAML file parses -------------------------------------------------------------

docs_by_file = {}
for top in ("k8s", "deploy"):
    for dirpath, dirnames, filenames in os.walk(os.path.join(REPO, top)):
        dirnames[:] = sorted(d for d in dirnames if d not in ("target", "__pycache__", ".gantry"))
        for name in sorted(filenames):
            if not name.endswith((".yaml", ".yml")):
                continue
            path = os.path.join(dirpath, name)
            try:
                with open(path, encoding="utf-8") as f:
                    docs_by_file[path] = [d for d in yaml.safe_load_all(f) if d is not None]
                check(True, path, "")
            except yaml.YAMLError as e:
                docs_by_file[path] = []
                check(False, path, f"does not parse: {e}")


def load_docs(path):
    """The documents of a YAML file; none (and a failure) when it does not parse."""
    if path not in docs_by_file:
        try:
            with open(path, encoding="utf-8") as f:
                docs_by_file[path] = [d for d in yaml.safe_load_all(f) if d is not None]
        except (OSError, yaml.YAMLError) as e:
            docs_by_file[path] = []
            check(False, path, f"cannot be read: {e}")
    return docs_by_file[path]


# --- kustomizations ---------------------------------------------------------------------

KUSTOMIZATION_NAMES = ("kustomization.yaml", "kustomization.yml", "Kustomization")


def kustomization_in(directory):
    for name in KUSTOMIZATION_NAMES:
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            return path
    return None


def is_remote(entry):
    return "://" in entry or entry.startswith(("github.com/", "git@"))


def generator_inputs(gen):
    for key in ("envs", "files"):
        for entry in gen.get(key) or []:
            # files may be `key=path`
            yield entry.split("=", 1)[1] if key == "files" and "=" in entry else entry
    if gen.get("env"):
        yield gen["env"]


patch_files = set()   # files used as patches: partial objects, not checked as workloads
resource_files = set()
objects_cache = {}


def objects_of(kpath, stack=()):
    """(kind, name) -> object for everything a kustomization's resources define."""
    if kpath in objects_cache:
        return objects_cache[kpath]
    if kpath in stack:
        fail(kpath, "kustomization includes itself")
        return {}
    kdir = os.path.dirname(kpath)
    k = load_docs(kpath)
    k = k[0] if k else {}
    objects = {}
    for entry in (k.get("resources") or []) + (k.get("components") or []) + (k.get("bases") or []):
        if is_remote(entry):
            continue
        path = os.path.normpath(os.path.join(kdir, entry))
        if os.path.isdir(path):
            sub = kustomization_in(path)
            if sub:
                objects.update(objects_of(sub, stack + (kpath,)))
        elif os.path.isfile(path):
            resource_files.add(path)
            for doc in load_docs(path):
                if isinstance(doc, dict) and doc.get("kind"):
                    objects[(doc["kind"], (doc.get("metadata") or {}).get("name"))] = doc
    for gen_key, kind in (("configMapGenerator", "ConfigMap"), ("secretGenerator", "Secret")):
        for gen in k.get(gen_key) or []:
            objects[(kind, gen.get("name"))] = {"kind": kind, "metadata": {"name": gen.get("name")}}
    objects_cache[kpath] = objects
    return objects


def pointer_exists(obj, pointer):
    node = obj
    for raw in pointer.lstrip("/").split("/"):
        token = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(node, list):
            if not token.isdigit() or int(token) >= len(node):
                return False
            node = node[int(token)]
        elif isinstance(node, dict):
            if token not in node:
                return False
            node = node[token]
        else:
            return False
    return True


def check_json_patch(kpath, ops, target_obj, label):
    if not check(isinstance(ops, list), kpath, f"{label}: a JSON patch must be a list of operations"):
        return
    for op in ops:
        if op.get("op") in ("remove", "replace", "test", "move", "copy"):
            paths = [op.get("path")] + ([op.get("from")] if op.get("op") in ("move", "copy") else [])
            for p in paths:
                check(target_obj is not None and pointer_exists(target_obj, p or ""), kpath,
                      f"{label}: {op.get('op')} {p}: no such field in the target")


def find_target(objects, target):
    kind, name = target.get("kind"), target.get("name")
    return [o for (k, n), o in objects.items() if (kind is None or k == kind) and (name is None or n == name)]


kustomizations = sorted(p for p in docs_by_file if os.path.basename(p) in KUSTOMIZATION_NAMES)
check(bool(kustomizations), os.path.join(REPO, "k8s"), "no kustomization.yaml found")
for kpath in kustomizations:
    kdir = os.path.dirname(kpath)
    docs = docs_by_file[kpath]
    if not check(len(docs) == 1 and isinstance(docs[0], dict), kpath, "must hold one mapping"):
        continue
    k = docs[0]
    for entry in (k.get("resources") or []) + (k.get("components") or []) + (k.get("bases") or []):
        if is_remote(entry):
            continue
        path = os.path.normpath(os.path.join(kdir, entry))
        if os.path.isdir(path):
            check(kustomization_in(path) is not None, kpath, f"resource {entry}: directory without a kustomization.yaml")
        else:
            check(os.path.isfile(path), kpath, f"resource {entry}: no such file")
    for gen_key in ("configMapGenerator", "secretGenerator"):
        for gen in k.get(gen_key) or []:
            for entry in generator_inputs(gen):
                path = os.path.join(kdir, entry)
                if check(os.path.isfile(path), kpath, f"{gen_key} {gen.get('name')}: {entry}: no such file"):
                    if entry in (gen.get("envs") or []) or entry == gen.get("env"):
                        with open(path, encoding="utf-8") as f:
                            for n, line in enumerate(f, 1):
                                line = line.strip()
                                if line and not line.startswith("#"):
                                    check(re.match(r"^[A-Za-z_][A-Za-z0-9_.-]*=", line) is not None,
                                          path, f"line {n}: expected KEY=value")

    objects = objects_of(kpath)
    patches = list(k.get("patches") or [])
    patches += [{"path": p} for p in k.get("patchesStrategicMerge") or [] if isinstance(p, str)]
    patches += k.get("patchesJson6902") or []
    for i, patch in enumerate(patches):
        label = f"patch {patch.get('path') or i + 1}"
        target = patch.get("target")
        targets = None
        if target:
            targets = find_target(objects, target)
            check(bool(targets), kpath, f"{label}: target {target.get('kind')}/{target.get('name')} is not among the resources")
        if patch.get("path"):
            path = os.path.normpath(os.path.join(kdir, patch["path"]))
            if not check(os.path.isfile(path), kpath, f"{label}: no such file"):
                continue
            patch_files.add(path)
            body = load_docs(path)
        elif patch.get("patch"):
            try:
                body = [d for d in yaml.safe_load_all(patch["patch"]) if d is not None]
            except yaml.YAMLError as e:
                check(False, kpath, f"{label}: inline patch does not parse: {e}")
                continue
        else:
            check(False, kpath, f"{label}: neither path nor patch")
            continue
        if len(body) == 1 and isinstance(body[0], list):
            # JSON 6902: needs a target; its remove/replace paths must exist there.
            if check(bool(targets), kpath, f"{label}: a JSON patch needs a target"):
                for t in targets:
                    check_json_patch(kpath, body[0], t, label)
        elif not target:
            # Strategic merge: each document names the object it changes.
            for doc in body:
                if isinstance(doc, dict):
                    key = (doc.get("kind"), (doc.get("metadata") or {}).get("name"))
                    check(key in objects, kpath, f"{label}: {key[0]}/{key[1]} is not among the resources")

# --- workloads ---------------------------------------------------------------------------

workloads = 0
for path in sorted(resource_files - patch_files):
    for doc in load_docs(path):
        if not isinstance(doc, dict) or doc.get("kind") not in ("Deployment", "StatefulSet"):
            continue
        workloads += 1
        name = f"{doc['kind']}/{(doc.get('metadata') or {}).get('name')}"
        pod = ((doc.get("spec") or {}).get("template") or {}).get("spec") or {}
        pod_sc = pod.get("securityContext") or {}
        containers = pod.get("containers") or []
        check(bool(containers), path, f"{name}: no containers")
        for c in containers:
            cname = f"{name} container {c.get('name')}"
            check("readinessProbe" in c, path, f"{cname}: no readinessProbe")
            check("livenessProbe" in c, path, f"{cname}: no livenessProbe")
            requests = (c.get("resources") or {}).get("requests") or {}
            check("cpu" in requests and "memory" in requests, path, f"{cname}: needs cpu and memory requests")
            run_as_non_root = (c.get("securityContext") or {}).get("runAsNonRoot", pod_sc.get("runAsNonRoot"))
            check(run_as_non_root is True, path, f"{cname}: must set runAsNonRoot: true")
            check(bool(c.get("image")), path, f"{cname}: no image")
check(workloads > 0, os.path.join(REPO, "k8s"), "no Deployment found among the kustomizations' resources")

# Placeholder credentials must still be usable: the services refuse an admin API token under
# 32 characters, and a placeholder that crashes them hides the real problem.
for path, docs in docs_by_file.items():
    for doc in docs:
        if isinstance(doc, dict) and doc.get("kind") == "Secret":
            token = (doc.get("stringData") or {}).get("GANTRY_ADMIN_API_TOKEN")
            if token is not None:
                check(len(str(token)) >= 32, path, "GANTRY_ADMIN_API_TOKEN must be at least 32 characters")

# --- docker compose ----------------------------------------------------------------------

compose_path = os.path.join(REPO, "deploy", "docker-compose.yml")


def dockerfile_copy_sources(dockerfile):
    """Local sources of COPY/ADD instructions (not --from=...), continuation lines joined."""
    with open(dockerfile, encoding="utf-8") as f:
        text = re.sub(r"\\\n", " ", f.read())
    for line in text.splitlines():
        words = line.strip().split()
        if not words or words[0].upper() not in ("COPY", "ADD"):
            continue
        args = [w for w in words[1:] if not w.startswith("--")]
        if any(w.startswith("--from") for w in words[1:]) or len(args) < 2:
            continue
        yield from args[:-1]


if check(os.path.isfile(compose_path), compose_path, "missing"):
    compose = docs_by_file.get(compose_path, [{}])[0] or {}
    services = compose.get("services") or {}
    check(bool(services), compose_path, "no services")
    compose_dir = os.path.dirname(compose_path)
    for sname, svc in services.items():
        where = f"{rel(compose_path)} service {sname}"
        check(bool(svc.get("image") or svc.get("build")), where, "neither image nor build")
        build = svc.get("build")
        if build:
            if isinstance(build, str):
                build = {"context": build}
            context = os.path.normpath(os.path.join(compose_dir, build.get("context", ".")))
            dockerfile = os.path.join(context, build.get("dockerfile", "Dockerfile"))
            if check(os.path.isdir(context), where, f"build context {build.get('context')} does not exist") and \
               check(os.path.isfile(dockerfile), where, f"Dockerfile {rel(dockerfile)} does not exist"):
                for src in dockerfile_copy_sources(dockerfile):
                    if src in (".", "./") or "*" in src or "$" in src:
                        continue
                    check(os.path.exists(os.path.join(context, src)), where,
                          f"{rel(dockerfile)} copies {src}, which is not in the build context")
            env = svc.get("environment") or {}
            if isinstance(env, list):
                env = dict(e.split("=", 1) if "=" in e else (e, None) for e in env)
            check(bool(env.get("OTEL_SERVICE_NAME")), where, "Gantry services set OTEL_SERVICE_NAME")
        check("healthcheck" in svc, where, "no healthcheck")
        depends = svc.get("depends_on") or {}
        if isinstance(depends, list):
            depends = {d: {} for d in depends}
        for dep, cond in depends.items():
            check(dep in services, where, f"depends on unknown service {dep}")
            if (cond or {}).get("condition") == "service_healthy":
                check("healthcheck" in (services.get(dep) or {}), where,
                      f"waits for {dep} to be healthy, but {dep} has no healthcheck")

# --- verdict -----------------------------------------------------------------------------

for message in failures:
    print(f"FAIL {message}", file=sys.stderr)
print(f"validate: {len(docs_by_file)} YAML files, {len(kustomizations)} kustomizations, "
      f"{workloads} workloads, {checks} checks, {len(failures)} failing")
sys.exit(1 if failures else 0)
PY

exit "$status"
