"""Rules of tend's Kubernetes manifests that a schema cannot express.

Usage: k8s_policy.py NAME RENDERED.yaml

NAME is `base` or an overlay's name; `prod` must pin images by digest.
Besides the workload rules, it checks the boundary of /metrics: every tend
service has a container port named `metrics`, which its listen variable,
its scrape annotations and the NetworkPolicies agree on; no policy opens it
to every source, and one opens it to a namespace (the monitoring one).

Prints one problem per line and exits 1 if there is any. Run by k8s.sh with
the check venv's Python (PyYAML comes with kubernetes-validate).
"""

import sys

import yaml

WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "Job"}

# A key per job: the variables of each token key, and the one component
# whose containers may read them. Nothing else reads a token key, and the
# single key of earlier releases is read by nobody.
TOKEN_KEY_VARS = {
    "platform": {"TEND_ADMIN_TOKEN_KEY", "TEND_ADMIN_TOKEN_PREVIOUS_KEYS"},
    "sync": {"TEND_DEVICE_TOKEN_KEY", "TEND_DEVICE_TOKEN_PREVIOUS_KEYS"},
}
REQUIRED_TOKEN_KEY = {"platform": "TEND_ADMIN_TOKEN_KEY", "sync": "TEND_DEVICE_TOKEN_KEY"}
RETIRED_VARS = {"TEND_JWT_SECRET"}
# The instruction signing key: the platform's alone, as a file from this
# Secret (a generated one carries a hash suffix).
SIGNING_SECRET = "tend-signing-key"
SIGNING_VAR = "TEND_SIGNING_KEY_FILE"
# Created out of band in base and prod (secret.example.yaml).
OUT_OF_BAND_SECRETS = {"tend-secrets", SIGNING_SECRET}


def main() -> int:
    name, path = sys.argv[1], sys.argv[2]
    with open(path, encoding="utf-8") as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    problems: list[str] = []
    bad = problems.append

    if not docs:
        bad("the rendering holds no object")
    by_kind: dict[str, dict[str, dict]] = {}
    for d in docs:
        by_kind.setdefault(d["kind"], {})[d["metadata"]["name"]] = d

    secrets = by_kind.get("Secret", {})
    configmaps = by_kind.get("ConfigMap", {})
    if name in ("base", "prod") and secrets:
        bad(f"{name} must not carry a Secret (found {', '.join(secrets)}): "
            "production credentials are created out of band")

    grace_s = None
    for cm in configmaps.values():
        if "TEND_SHUTDOWN_GRACE_S" in cm.get("data", {}):
            grace_s = int(cm["data"]["TEND_SHUTDOWN_GRACE_S"])

    hpa_targets = {h["spec"]["scaleTargetRef"]["name"]
                   for h in by_kind.get("HorizontalPodAutoscaler", {}).values()}
    for target in hpa_targets:
        if target not in by_kind.get("Deployment", {}):
            bad(f"HorizontalPodAutoscaler targets a missing Deployment {target}")

    for kind in WORKLOADS:
        for wname, w in by_kind.get(kind, {}).items():
            where = f"{kind.lower()}/{wname}"
            spec = w["spec"]
            pod = spec["template"]["spec"]
            tend = spec["template"]["metadata"].get("labels", {}).get(
                "app.kubernetes.io/name") == "tend"
            if kind == "Deployment" and wname in hpa_targets and "replicas" in spec:
                bad(f"{where}: sets replicas although an HPA owns the count")
            for kind_ref, ref_name, optional in volume_refs(pod):
                pool = secrets if kind_ref == "Secret" else configmaps
                if ref_name in pool or optional:
                    continue
                if kind_ref == "Secret" and not secrets and ref_name in OUT_OF_BAND_SECRETS:
                    continue
                bad(f"{where}: mounts a missing {kind_ref} {ref_name}")
            psc = pod.get("securityContext", {})
            if psc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
                bad(f"{where}: pod seccompProfile is not RuntimeDefault")
            if pod.get("automountServiceAccountToken") is not False:
                bad(f"{where}: mounts a service account token")
            for c in pod["containers"] + pod.get("initContainers", []):
                cw = f"{where} container {c['name']}"
                csc = c.get("securityContext", {})
                if not (csc.get("runAsNonRoot") or psc.get("runAsNonRoot")):
                    bad(f"{cw}: runAsNonRoot is not set")
                if csc.get("allowPrivilegeEscalation") is not False:
                    bad(f"{cw}: allowPrivilegeEscalation is not false")
                if "ALL" not in csc.get("capabilities", {}).get("drop", []):
                    bad(f"{cw}: does not drop ALL capabilities")
                res = c.get("resources", {})
                for part in ("requests", "limits"):
                    for r in ("cpu", "memory"):
                        if r not in res.get(part, {}):
                            bad(f"{cw}: no {part}.{r}")
                for ref in refs(c):
                    kind_ref, ref_name, optional = ref
                    pool = secrets if kind_ref == "Secret" else configmaps
                    if ref_name in pool or optional:
                        continue
                    # base and prod read the Secrets created out of band.
                    if kind_ref == "Secret" and not secrets and ref_name in OUT_OF_BAND_SECRETS:
                        continue
                    bad(f"{cw}: refers to a missing {kind_ref} {ref_name}")
                for problem in key_problems(component(w), c, pod):
                    bad(f"{cw}: {problem}")
                if name == "prod" and "@sha256:" not in c["image"]:
                    bad(f"{cw}: image {c['image']} is not pinned by digest")
                if not tend:
                    continue
                if csc.get("readOnlyRootFilesystem") is not True:
                    bad(f"{cw}: root filesystem is writable")
                if kind != "Deployment":
                    continue
                if probe_path(c, "livenessProbe") != "/healthz":
                    bad(f"{cw}: liveness must probe /healthz only")
                if probe_path(c, "readinessProbe") != "/readyz":
                    bad(f"{cw}: readiness must probe /readyz")
                if "startupProbe" not in c:
                    bad(f"{cw}: no startupProbe")
                pre_stop = sleep_seconds(c)
                period = pod.get("terminationGracePeriodSeconds", 30)
                if grace_s is not None and pre_stop + grace_s >= period:
                    bad(f"{cw}: preStop {pre_stop} s + drain {grace_s} s does not end "
                        f"before terminationGracePeriodSeconds {period}")

    for sname, secret in secrets.items():
        for problem in generated_key_problems(secret):
            bad(f"secret/{sname}: {problem}")

    check_metrics_ports(by_kind, bad)

    for p in problems:
        print(f"POLICY {name}: {p}")
    return 1 if problems else 0


def check_metrics_ports(by_kind, bad):
    """/metrics stays off the public ports and open to monitoring alone."""
    policies = list(by_kind.get("NetworkPolicy", {}).values())
    for wname, w in by_kind.get("Deployment", {}).items():
        template = w["spec"]["template"]
        labels = template["metadata"].get("labels", {})
        if labels.get("app.kubernetes.io/name") != "tend":
            continue
        where = f"deployment/{wname}"
        container = template["spec"]["containers"][0]
        ports = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
        metrics = ports.get("metrics")
        if metrics is None:
            bad(f"{where}: no container port named metrics")
            continue
        if ports.get("http") == metrics:
            bad(f"{where}: /metrics is served on the public port {metrics}")
        env = {e["name"]: e.get("value") for e in container.get("env", [])}
        # Platform and sync serve /metrics on TEND_METRICS_LISTEN; the
        # monitor, which has no public port, on its one TEND_LISTEN.
        listen = env.get("TEND_METRICS_LISTEN") if "http" in ports else env.get("TEND_LISTEN")
        if listen is None or listen.rsplit(":", 1)[-1] != str(metrics):
            bad(f"{where}: the metrics port {metrics} is not where the service listens for "
                f"/metrics ({listen})")
        annotations = template["metadata"].get("annotations", {})
        if (annotations.get("prometheus.io/scrape") == "true"
                and annotations.get("prometheus.io/port") != str(metrics)):
            bad(f"{where}: prometheus.io/port is not the metrics port {metrics}")
        if not policies:
            continue
        scraped = False
        for pol in policies:
            spec = pol["spec"]
            if not selects(spec.get("podSelector", {}), labels):
                continue
            if "Ingress" not in spec.get("policyTypes", ["Ingress"]):
                continue
            for rule in spec.get("ingress", []):
                opened = rule_ports(rule)
                if opened is not None and metrics not in opened and "metrics" not in opened:
                    continue
                sources = rule.get("from", [])
                if not sources:
                    bad(f"{where}: networkpolicy/{pol['metadata']['name']} opens the metrics "
                        f"port {metrics} to every source")
                elif any("namespaceSelector" in src for src in sources):
                    scraped = True
        if not scraped:
            bad(f"{where}: no NetworkPolicy lets a monitoring namespace reach the metrics "
                f"port {metrics}")


def selects(selector, labels):
    """Whether a label selector (matchLabels, matchExpressions) selects `labels`."""
    for k, v in selector.get("matchLabels", {}).items():
        if labels.get(k) != v:
            return False
    for e in selector.get("matchExpressions", []):
        key, op, values = e["key"], e["operator"], e.get("values", [])
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def rule_ports(rule):
    """The ports (numbers or names) an ingress rule opens; None for all."""
    opened = set()
    for p in rule.get("ports") or [None]:
        if p is None or p.get("port") is None:
            return None
        port, end = p["port"], p.get("endPort")
        opened.update(range(port, end + 1) if end is not None else [port])
    return opened


def refs(container):
    """(kind, name, optional) of every Secret and ConfigMap a container reads."""
    for e in container.get("env", []):
        src = e.get("valueFrom", {})
        if "secretKeyRef" in src:
            r = src["secretKeyRef"]
            yield "Secret", r["name"], r.get("optional", False)
        if "configMapKeyRef" in src:
            r = src["configMapKeyRef"]
            yield "ConfigMap", r["name"], r.get("optional", False)
    for e in container.get("envFrom", []):
        if "secretRef" in e:
            yield "Secret", e["secretRef"]["name"], e["secretRef"].get("optional", False)
        if "configMapRef" in e:
            yield "ConfigMap", e["configMapRef"]["name"], e["configMapRef"].get("optional", False)


def volume_refs(pod):
    """(kind, name, optional) of every Secret and ConfigMap a pod mounts."""
    for v in pod.get("volumes", []):
        if "secret" in v:
            yield "Secret", v["secret"]["secretName"], v["secret"].get("optional", False)
        if "configMap" in v:
            yield "ConfigMap", v["configMap"]["name"], v["configMap"].get("optional", False)


def component(workload):
    labels = workload["spec"]["template"]["metadata"].get("labels", {})
    if labels.get("app.kubernetes.io/name") != "tend":
        return None
    return labels.get("app.kubernetes.io/component")


def key_problems(comp, container, pod):
    """Token and signing keys read by a container that must not hold them."""
    names = {e["name"] for e in container.get("env", [])}
    for retired in sorted(names & RETIRED_VARS):
        yield f"sets {retired}, which no service reads any more"
    for owner, variables in TOKEN_KEY_VARS.items():
        if comp != owner:
            for var in sorted(names & variables):
                yield f"reads {var}, a key of tend-{owner} alone"
    if comp in REQUIRED_TOKEN_KEY and REQUIRED_TOKEN_KEY[comp] not in names:
        yield f"does not read {REQUIRED_TOKEN_KEY[comp]}"
    if comp is not None:
        for e in container.get("envFrom", []):
            if "secretRef" in e:
                # A whole Secret would bring every key in it along.
                yield f"imports the whole Secret {e['secretRef']['name']}: name each key"
    signing_volumes = [v["name"] for v in pod.get("volumes", [])
                       if v.get("secret", {}).get("secretName", "").startswith(SIGNING_SECRET)]
    if comp == "platform":
        if not signing_volumes:
            yield f"has no volume of the Secret {SIGNING_SECRET}"
        for vname in signing_volumes:
            mount = next((m for m in container.get("volumeMounts", []) if m["name"] == vname), None)
            if mount is None or not mount.get("readOnly"):
                yield f"does not mount the signing key volume {vname} read-only"
        if SIGNING_VAR not in names:
            yield f"does not set {SIGNING_VAR}"
    else:
        if SIGNING_VAR in names:
            yield f"sets {SIGNING_VAR}, a key of tend-platform alone"
        for vname in signing_volumes:
            yield f"its pod has the signing key volume {vname}, a key of tend-platform alone"


def generated_key_problems(secret):
    """A generated Secret's token keys: present, long, and one per service."""
    import base64
    values = {k: base64.b64decode(v).decode("utf-8", "replace")
              for k, v in secret.get("data", {}).items()}
    values.update(secret.get("stringData", {}))
    keys = {k: v.strip() for k, v in values.items() if k.endswith("-token-key")}
    for k, v in keys.items():
        if len(v) < 32:
            yield f"{k} is shorter than 32 characters"
    if len(set(keys.values())) < len(keys):
        yield "the admin and device token keys are the same: each service needs its own"


def probe_path(container, probe):
    return container.get(probe, {}).get("httpGet", {}).get("path")


def sleep_seconds(container):
    cmd = container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
    if len(cmd) == 2 and cmd[0] == "sleep":
        return int(cmd[1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
