#!/usr/bin/env bash
# Checks Gantry's deployment files with the real tools, without Docker or a cluster:
#   - kubectl kustomize renders every overlay, every component (k8s/components/*) on the base,
#     and the production overlay with the components it lacks (both kinds of GPUs);
#   - kubernetes-validate --strict checks every rendered object against the schemas of
#     Kubernetes $KUBERNETES_VERSION; the custom resources (KEDA, cert-manager), which it does
#     not know, are checked against the schemas in k8s/schemas/;
#   - hadolint lints every Dockerfile (.hadolint.yaml), yamllint every YAML file (.yamllint.yaml);
#   - bash -n parses every shell script under deploy/;
#   - the few things no tool checks: KEDA's nats-jetstream trigger metadata (the fields KEDA
#     documents, the consumers Gantry creates), each ScaledObject's target, and that a trainer's
#     preStop drain fits in its grace period.
# Installs its tools (pinned, deploy/local/lib.sh) on first use; kubectl must be on PATH. Exits
# non-zero on any finding.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/local/lib.sh"
cd "$GANTRY_REPO"

KUBERNETES_VERSION="${KUBERNETES_VERSION:-1.37.0}"
ensure_manifest_tools

status=0
fail() { echo "FAIL $*" >&2; status=1; }

out="$(mktemp -d)"
trap 'rm -rf "$out" k8s/.validate-*' EXIT

# --- render ------------------------------------------------------------------------------
renders=()
for overlay in k8s/overlays/*/; do
    name="overlay-$(basename "$overlay")"
    if kubectl kustomize "$overlay" >"$out/$name.yaml" 2>"$out/$name.err"; then
        renders+=("$out/$name.yaml")
    else
        fail "kubectl kustomize $overlay: $(cat "$out/$name.err")"
    fi
done
# Each component on the base, and the production overlay with every component it lacks (a
# cluster with both kinds of GPUs), each in a kustomization of its own, made inside the
# repository: kustomize loads nothing from outside a kustomization's tree.
render_with() { # name, resource, components...
    local name="$1" resource="$2"; shift 2
    local dir="k8s/.validate-$name"
    rm -rf "$dir" && mkdir -p "$dir"
    {
        echo "apiVersion: kustomize.config.k8s.io/v1beta1"
        echo "kind: Kustomization"
        echo "resources: [../$resource]"
        echo "components:"
        for c in "$@"; do echo "  - ../components/$c"; done
    } >"$dir/kustomization.yaml"
    if kubectl kustomize "$dir" >"$out/$name.yaml" 2>"$out/$name.err"; then
        renders+=("$out/$name.yaml")
    else
        fail "kubectl kustomize base with $*: $(cat "$out/$name.err")"
    fi
    rm -rf "$dir"
}
missing=()
for component in k8s/components/*/; do
    cname="$(basename "$component")"
    render_with "component-$cname" base "$cname"
    grep -q "components/$cname\$" k8s/overlays/production/kustomization.yaml || missing+=("$cname")
done
if [ ${#missing[@]} -gt 0 ]; then
    render_with "production-with-$(IFS=-; echo "${missing[*]}")" overlays/production "${missing[@]}"
fi

# --- Kubernetes' schemas -----------------------------------------------------------------
for render in "${renders[@]}"; do
    label="$(basename "$render" .yaml)"
    if ! kubernetes-validate --strict --quiet -k "$KUBERNETES_VERSION" "$render" >"$out/$label.kv" 2>&1; then
        fail "kubernetes-validate $label:"
        sed 's/^/    /' "$out/$label.kv" >&2
    fi
done

# --- custom resources and the checks no tool makes ----------------------------------------
"$GANTRY_TOOLS_VENV/bin/python" - "$GANTRY_REPO" "${renders[@]}" <<'PY' || status=1
import json
import os
import re
import sys

import jsonschema
import yaml

repo, renders = sys.argv[1], sys.argv[2:]
schemas_dir = os.path.join(repo, "k8s", "schemas")
failures = []
objects = 0

# The nats-jetstream scaler's metadata, as KEDA documents it
# (https://keda.sh/docs/latest/scalers/nats-jetstream/).
JETSTREAM_FIELDS = {
    "natsServerMonitoringEndpoint", "account", "stream", "consumer", "lagThreshold",
    "activationLagThreshold", "useHttps",
}
JETSTREAM_REQUIRED = {"natsServerMonitoringEndpoint", "account", "stream", "consumer"}
# The consumers Gantry creates (shared/runtime/src/jetstream.rs: train-<driver>, analyze-<driver>).
CONSUMERS = {f"{kind}-{driver}" for kind in ("train", "analyze")
             for driver in ("cuda", "rocm", "cpu", "any")}


def schema_for(api_version, kind):
    path = os.path.join(schemas_dir, f"{api_version.replace('/', '_')}_{kind}.json")
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


for render in renders:
    label = os.path.basename(render)[: -len(".yaml")]
    with open(render, encoding="utf-8") as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], {})[d["metadata"]["name"]] = d
    for d in docs:
        objects += 1
        api, kind, name = d["apiVersion"], d["kind"], d["metadata"]["name"]
        where = f"{label}: {kind}/{name}"
        group = api.split("/")[0] if "/" in api else ""
        if "." in group and not group.endswith(".k8s.io"):
            schema = schema_for(api, kind)
            if schema is None:
                failures.append(f"{where}: no schema for {api} {kind} in k8s/schemas/")
            else:
                for e in jsonschema.Draft202012Validator(schema).iter_errors(d):
                    path = "/".join(str(p) for p in e.absolute_path)
                    failures.append(f"{where}: {path}: {e.message}")

        if kind == "ScaledObject":
            target = d["spec"]["scaleTargetRef"]
            tkind = target.get("kind", "Deployment")
            if target["name"] not in by_kind.get(tkind, {}):
                failures.append(f"{where}: scales {tkind}/{target['name']}, which is not rendered")
            for t in d["spec"]["triggers"]:
                if t["type"] != "nats-jetstream":
                    continue
                meta = t["metadata"]
                unknown = set(meta) - JETSTREAM_FIELDS
                missing = JETSTREAM_REQUIRED - set(meta)
                if unknown:
                    failures.append(f"{where}: nats-jetstream has no field {sorted(unknown)}")
                if missing:
                    failures.append(f"{where}: nats-jetstream needs {sorted(missing)}")
                if meta.get("consumer") not in CONSUMERS:
                    failures.append(f"{where}: consumer {meta.get('consumer')!r} is not one Gantry creates")
                if meta.get("stream") != "GANTRY_JOBS" or meta.get("account") != "GANTRY":
                    failures.append(f"{where}: Gantry's jobs are stream GANTRY_JOBS in account GANTRY")
                for k in ("lagThreshold", "activationLagThreshold"):
                    if k in meta and not re.fullmatch(r"[0-9]+", meta[k]):
                        failures.append(f"{where}: {k} must be a whole number, as a string")
                if meta.get("useHttps", "false") not in ("true", "false"):
                    failures.append(f"{where}: useHttps is \"true\" or \"false\"")

        if kind == "StatefulSet" and name.startswith("gantry-trainer"):
            pod = d["spec"]["template"]["spec"]
            grace = pod.get("terminationGracePeriodSeconds", 30)
            for c in pod["containers"]:
                cmd = (((c.get("lifecycle") or {}).get("preStop") or {}).get("exec") or {}).get("command") or []
                if "drain" not in cmd:
                    failures.append(f"{where}: container {c['name']} needs the preStop `gantry-trainer drain`")
                    continue
                timeout = int(cmd[cmd.index("--timeout") + 1]) if "--timeout" in cmd else 90
                if timeout + 10 > grace:
                    failures.append(
                        f"{where}: the preStop drain waits up to {timeout}s; the grace period "
                        f"({grace}s) must leave the trainer 10s more to stop"
                    )

for message in failures:
    print(f"FAIL {message}", file=sys.stderr)
print(f"validate: {len(renders)} renders, {objects} objects checked, {len(failures)} findings")
sys.exit(1 if failures else 0)
PY

# --- Dockerfiles, YAML, shell ----------------------------------------------------------------
mapfile -t dockerfiles < <(git ls-files --cached --others --exclude-standard -- 'Dockerfile*' '*/Dockerfile*')
[ ${#dockerfiles[@]} -gt 0 ] || fail "no Dockerfile found"
hadolint --config .hadolint.yaml "${dockerfiles[@]}" || fail "hadolint: ${dockerfiles[*]}"

mapfile -t yamls < <(git ls-files --cached --others --exclude-standard -- '*.yaml' '*.yml')
yamllint --strict -c .yamllint.yaml "${yamls[@]}" || fail "yamllint"

for script in deploy/*.sh deploy/local/*.sh; do
    bash -n "$script" || fail "$script: bash -n found a syntax error"
done

echo "validate: ${#renders[@]} renders, ${#dockerfiles[@]} Dockerfiles, ${#yamls[@]} YAML files"
exit "$status"
