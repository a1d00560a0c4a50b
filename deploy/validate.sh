#!/usr/bin/env bash
# Validates every Kubernetes manifest in deploy/k8s against the Kubernetes API schemas, offline.
#
# The validator is kubernetes-validate (PyPI), which bundles the schemas of each Kubernetes
# release, so no cluster and no network are needed once it is installed. It is installed into a
# virtualenv under target/ on first use (the only step that needs the package registry).
# Strict mode: unknown or misspelt fields fail, as do missing required ones.
#
#   deploy/validate.sh              # every *.yaml in deploy/k8s
#   deploy/validate.sh FILE...      # just these files
#
# Environment: KUBERNETES_VERSION (default 1.33.0) is the API version validated against.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="$root/target/kubernetes-validate"
validator_version="1.37.0"
kubernetes_version="${KUBERNETES_VERSION:-1.33.0}"

if [ ! -x "$venv/bin/kubernetes-validate" ]; then
  echo "validate: installing kubernetes-validate $validator_version into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "kubernetes-validate==$validator_version"
fi

if [ "$#" -gt 0 ]; then
  files=("$@")
else
  files=()
  while IFS= read -r -d '' f; do files+=("$f"); done \
    < <(find "$root/deploy/k8s" -name '*.yaml' -print0 | sort -z)
fi
[ "${#files[@]}" -gt 0 ] || { echo "validate: no manifests found" >&2; exit 1; }

# kustomization.yaml is kustomize's own file, not an API object: the validator has no schema for
# it, so it is checked for the files it names instead. Custom resources (CloudNativePG's Cluster)
# have no schema in the validator either: they are checked below against the fields Baton's
# manifests use, strictly (an unknown or misspelt field fails).
manifests=()
custom=()
for f in "${files[@]}"; do
  if grep -q '^apiVersion: postgresql\.cnpg\.io/' "$f"; then
    custom+=("$f")
  elif [ "$(basename "$f")" = kustomization.yaml ]; then
    dir="$(dirname "$f")"
    for r in $(sed -n '/^resources:/,/^[^ -]/s/^  - //p' "$f"); do
      [ -f "$dir/$r" ] || { echo "validate: $f names $r, which does not exist" >&2; exit 1; }
    done
  else
    manifests+=("$f")
  fi
done

# --strict rejects unknown fields; a manifest with an error makes the exit status non-zero.
# Warnings (such as a deprecated API) are shown and fail too: the output is checked for them.
out="$("$venv/bin/kubernetes-validate" --strict -k "$kubernetes_version" "${manifests[@]}" 2>&1)" || {
  echo "$out" >&2
  echo "validate: FAILED" >&2
  exit 1
}
echo "$out"
if grep -qiE '^(WARN|ERROR)' <<<"$out"; then
  echo "validate: FAILED (warnings count as failures)" >&2
  exit 1
fi

# The schemas cannot see that the grace period covers the drain: check that here. Kubernetes
# kills the pod terminationGracePeriodSeconds after it starts stopping it; by then the preStop
# pause, the gRPC drain (BATON_DRAIN_TIMEOUT) and up to 10 s of stopping drivers and committing
# the log writer's last batch must be over. Every duration variable is also checked to be one that
# `baton serve` reads: 20s, 500ms, 2m, 1h30m, 7d, or a bare number of milliseconds.
"$venv/bin/python" - "${manifests[@]}" <<'PY'
import re, sys, yaml
bad = 0
DURATIONS = ["DEFAULT_TIMEOUT", "DEFAULT_INITIAL_BACKOFF", "DEFAULT_MAX_BACKOFF", "LEASE",
             "CLAIM_INTERVAL", "DRAIN_TIMEOUT", "PROGRESS_FLUSH", "REGISTRY_REFRESH",
             "CONNECT_TIMEOUT", "RETENTION_SWEEP", "TLS_RELOAD"]
UNIT_MS = {"ms": 1, "s": 1000, "m": 60000, "h": 3600000, "d": 86400000}
def duration_ms(text):
    """Milliseconds of a duration as baton serve parses it, or None if it would refuse it."""
    text = str(text).strip()
    if text.isdigit():
        return int(text)
    parts = re.findall(r"(\d+)([a-z]+)", text)
    if not parts or "".join(n + u for n, u in parts) != text or any(u not in UNIT_MS for _, u in parts):
        return None
    return sum(int(n) * UNIT_MS[u] for n, u in parts)
for path in sys.argv[1:]:
    for doc in yaml.safe_load_all(open(path)):
        if not doc or doc.get("kind") != "Deployment":
            continue
        pod = doc["spec"]["template"]["spec"]
        grace_ms = pod.get("terminationGracePeriodSeconds", 30) * 1000
        for c in pod["containers"]:
            env = {e["name"]: e.get("value") for e in c.get("env", [])}
            for name in DURATIONS:
                for var in (f"BATON_{name}", f"BATON_{name}_MS"):
                    if env.get(var) is not None and duration_ms(env[var]) is None:
                        print(f"validate: {path}: {var}={env[var]!r} is not a duration such as "
                              "20s, 500ms or 2m", file=sys.stderr)
                        bad += 1
            # As baton serve layers them: BATON_DRAIN_TIMEOUT over the older *_MS spelling.
            drain = env.get("BATON_DRAIN_TIMEOUT") or env.get("BATON_DRAIN_TIMEOUT_MS") or "10s"
            drain_ms = duration_ms(drain) or 0
            pause_ms = 0
            cmd = c.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
            if len(cmd) == 2 and cmd[0] == "sleep":
                pause_ms = int(float(cmd[1]) * 1000)
            need_ms = pause_ms + drain_ms + 10000
            if grace_ms <= need_ms:
                print(f"validate: {path}: terminationGracePeriodSeconds is {grace_ms // 1000} s, "
                      f"but stopping may take {need_ms // 1000} s (preStop {pause_ms} ms + "
                      f"drain {drain_ms} ms + 10 s to hand back)", file=sys.stderr)
                bad += 1
sys.exit(1 if bad else 0)
PY
if [ "${#custom[@]}" -gt 0 ]; then
"$venv/bin/python" - "${custom[@]}" <<'PY'
import sys, yaml
# The subset of CloudNativePG's Cluster (postgresql.cnpg.io/v1, operator 1.24+) that Baton's
# manifests use: a dict maps each allowed key to its own spec, a type checks a leaf.
SPEC = {
    "apiVersion": str, "kind": str,
    "metadata": {"name": str, "namespace": str, "labels": dict, "annotations": dict},
    "spec": {
        "instances": int, "imageName": str, "primaryUpdateStrategy": str,
        "primaryUpdateMethod": str,
        "postgresql": {
            "synchronous": {"method": str, "number": int, "dataDurability": str},
            "parameters": dict,
            "pg_hba": list,
        },
        "bootstrap": {"initdb": {"database": str, "owner": str, "secret": {"name": str}}},
        "storage": {"size": str, "storageClass": str},
        "walStorage": {"size": str, "storageClass": str},
        "resources": dict,
        "affinity": {"enablePodAntiAffinity": bool, "topologyKey": str,
                     "podAntiAffinityType": str, "nodeSelector": dict, "tolerations": list},
        "monitoring": {"enablePodMonitor": bool},
    },
}
def check(path, where, value, spec):
    if isinstance(spec, dict):
        if not isinstance(value, dict):
            return [f"{path}: {where}: expected a mapping"]
        errs = []
        for k, v in value.items():
            if k not in spec:
                errs.append(f"{path}: {where}.{k}: unknown field")
            else:
                errs += check(path, f"{where}.{k}", v, spec[k])
        return errs
    if spec is int and isinstance(value, bool) or not isinstance(value, spec):
        return [f"{path}: {where}: expected {spec.__name__}"]
    return []
errs = []
for path in sys.argv[1:]:
    for doc in yaml.safe_load_all(open(path)):
        if not doc:
            continue
        if doc.get("apiVersion") != "postgresql.cnpg.io/v1" or doc.get("kind") != "Cluster":
            errs.append(f"{path}: only postgresql.cnpg.io/v1 Cluster is known")
            continue
        before = len(errs)
        errs += check(path, "", doc, SPEC)
        spec = doc.get("spec", {})
        for required in ("instances", "storage"):
            if required not in spec:
                errs.append(f"{path}: spec.{required}: required")
        sync = spec.get("postgresql", {}).get("synchronous", {})
        if sync.get("method") not in ("any", "first"):
            errs.append(f"{path}: spec.postgresql.synchronous.method: any or first (RPO 0 needs synchronous replication)")
        if not 1 <= sync.get("number", 0) < spec.get("instances", 0):
            errs.append(f"{path}: spec.postgresql.synchronous.number: between 1 and instances - 1")
        if len(errs) == before:
            print(f"INFO {path} passed the Cluster check")
for e in errs:
    print(f"validate: {e}", file=sys.stderr)
sys.exit(1 if errs else 0)
PY
fi
echo "validate: ${#manifests[@]} manifests and ${#custom[@]} custom resources valid for Kubernetes $kubernetes_version"
