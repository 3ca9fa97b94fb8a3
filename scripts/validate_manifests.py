#!/usr/bin/env python3
"""Checks behind scripts/validate-manifests.sh (run that script, not this file).

Subcommands, each of which adds its results to a tally file (--tally) so that the shell
script can print one summary at the end:

  manifests   validate Kubernetes objects in YAML files or directories:
                - built-in kinds against the official OpenAPI schemas (kubernetes-validate,
                  strict: unknown fields are errors);
                - custom resources against the openAPIV3Schema of a CRD found in --crds
                  or among the validated files (kubernetes-validate has no CRD support;
                  CEL rules are not evaluated here, the API server does that);
                - anything else is skipped with a note;
              plus: every object has apiVersion/kind/metadata.name, no object appears
              twice, and every Pod template meets the restricted Pod Security Standard.
  helm        lint and render the chart with several value sets (helm binary when on
              PATH, otherwise the helm-python-sdk bindings of Helm's Go SDK), validate
              the output, assert what each value set must render, check that the
              values schema rejects bad values, and that the chart's RBAC grants
              exactly what config/rbac grants.
  argo        run deploy/argocd/health.lua against health_test.yaml (Lua 5.1 like Argo
              CD's gopher-lua) and check the argocd-cm kustomize output.
  summary     print the totals; exit 1 if anything failed.
  template    render the chart with a values file and print it, as `helm template` does
              (the end-to-end suite applies it); no tally.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterable

import yaml

CRD_KINDS = {
    # kind: plural
    "CustomerDataPlatform": "customerdataplatforms",
    "Source": "sources",
    "MatchingPolicy": "matchingpolicies",
    "Feed": "feeds",
    "ScalingPolicy": "scalingpolicies",
    "Enricher": "enrichers",
}
GROUP = "cdp.dev"
YAML_SUFFIXES = (".yaml", ".yml")
KUSTOMIZE_API = "kustomize.config.k8s.io/"


# --------------------------------------------------------------------------- tally

class Tally:
    """Pass/fail/skip counts shared by the subcommands through a JSON file."""

    def __init__(self, path: str | None):
        self.path = path
        self.data = {"passed": 0, "failed": 0, "skipped": 0, "failures": []}
        if path and os.path.exists(path) and os.path.getsize(path) > 0:
            with open(path) as f:
                self.data = json.load(f)
        self.section_failed = 0

    def ok(self, what: str, verbose: bool = False) -> None:
        self.data["passed"] += 1
        if verbose:
            print(f"  ok    {what}")

    def fail(self, what: str, why: str) -> None:
        self.data["failed"] += 1
        self.section_failed += 1
        self.data["failures"].append(f"{what}: {why}")
        print(f"  FAIL  {what}: {why}")

    def skip(self, what: str, why: str) -> None:
        self.data["skipped"] += 1
        print(f"  skip  {what}: {why}")

    def save(self) -> None:
        if self.path:
            with open(self.path, "w") as f:
                json.dump(self.data, f)


# --------------------------------------------------------------------------- YAML

def yaml_files(paths: Iterable[str]) -> list[Path]:
    out: list[Path] = []
    for p in paths:
        path = Path(p)
        if path.is_dir():
            out.extend(sorted(f for f in path.rglob("*") if f.is_file() and f.suffix in YAML_SUFFIXES))
        elif path.is_file():
            out.append(path)
    return out


def kustomize_configurations(files: list[Path]) -> set[Path]:
    """The files kustomizations among `files` name under `configurations:` (how their
    transformers treat fields, e.g. which ones `images:` rewrites): not Kubernetes objects."""
    out: set[Path] = set()
    for path in files:
        if path.name not in ("kustomization.yaml", "kustomization.yml"):
            continue
        with open(path) as f:
            doc = yaml.safe_load(f) or {}
        for entry in doc.get("configurations") or []:
            out.add((path.parent / entry).resolve())
    return out


def load_documents(path: Path, tally: Tally) -> list[dict] | None:
    """All non-empty documents of a (multi-document) YAML file; Lists are flattened."""
    try:
        with open(path) as f:
            docs = [d for d in yaml.safe_load_all(f) if d is not None]
    except yaml.YAMLError as e:
        tally.fail(str(path), f"not valid YAML: {e}")
        return None
    out: list[dict] = []
    for i, doc in enumerate(docs):
        if not isinstance(doc, dict):
            tally.fail(f"{path}#{i}", "document is not a mapping")
            continue
        if doc.get("kind") == "List" and isinstance(doc.get("items"), list):
            out.extend(item for item in doc["items"] if isinstance(item, dict))
        else:
            out.append(doc)
    return out


def describe(obj: dict) -> str:
    meta = obj.get("metadata") or {}
    ns = meta.get("namespace")
    name = meta.get("name") or meta.get("generateName") or "?"
    return f"{obj.get('kind', '?')} {ns + '/' if ns else ''}{name}"


# --------------------------------------------------------------------------- CRDs

class CrdSchemas:
    """openAPIV3Schemas of the CRDs seen so far, by (group, version, kind)."""

    def __init__(self) -> None:
        self.schemas: dict[tuple[str, str, str], dict] = {}
        self.cel: dict[tuple[str, str, str], int] = {}

    @property
    def cel_rules(self) -> int:
        return sum(self.cel.values())

    @staticmethod
    def _count_cel(node: Any) -> int:
        if isinstance(node, dict):
            return len(node.get("x-kubernetes-validations") or []) + sum(
                CrdSchemas._count_cel(v) for v in node.values())
        if isinstance(node, list):
            return sum(CrdSchemas._count_cel(v) for v in node)
        return 0

    def add(self, crd: dict) -> None:
        spec = crd.get("spec") or {}
        group = spec.get("group")
        kind = (spec.get("names") or {}).get("kind")
        for version in spec.get("versions") or []:
            schema = ((version.get("schema") or {}).get("openAPIV3Schema"))
            if group and kind and schema:
                key = (group, version.get("name"), kind)
                self.schemas[key] = schema
                self.cel[key] = self._count_cel(schema)

    def add_from(self, paths: Iterable[str], tally: Tally) -> None:
        for path in yaml_files(paths):
            for doc in load_documents(path, tally) or []:
                if doc.get("kind") == "CustomResourceDefinition":
                    self.add(doc)

    def lookup(self, obj: dict) -> dict | None:
        api_version = str(obj.get("apiVersion", ""))
        if "/" not in api_version:
            return None
        group, version = api_version.split("/", 1)
        return self.schemas.get((group, version, obj.get("kind")))


def structural_to_jsonschema(node: Any) -> Any:
    """Turn a CRD structural schema (OpenAPI v3.0 subset + x-kubernetes-* extensions)
    into a JSON Schema (draft 4) that rejects what the API server would reject or
    prune: unknown fields are errors, as with `kubectl apply --validate=strict`."""
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key in ("type", "enum", "required", "pattern", "minimum", "maximum",
                "exclusiveMinimum", "exclusiveMaximum", "minLength", "maxLength",
                "minItems", "maxItems", "uniqueItems", "minProperties",
                "maxProperties", "multipleOf"):
        if key in node:
            out[key] = node[key]
    if "properties" in node:
        out["properties"] = {k: structural_to_jsonschema(v) for k, v in node["properties"].items()}
    if "items" in node:
        out["items"] = structural_to_jsonschema(node["items"])
    for key in ("allOf", "anyOf", "oneOf"):
        if key in node:
            out[key] = [structural_to_jsonschema(v) for v in node[key]]
    if "not" in node:
        out["not"] = structural_to_jsonschema(node["not"])
    if "additionalProperties" in node:
        ap = node["additionalProperties"]
        out["additionalProperties"] = ap if isinstance(ap, bool) else structural_to_jsonschema(ap)
    elif (node.get("type") == "object" and "properties" in node
          and not node.get("x-kubernetes-preserve-unknown-fields")
          and not node.get("x-kubernetes-embedded-resource")):
        out["additionalProperties"] = False
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = out.get("anyOf", []) + [{"type": "integer"}, {"type": "string"}]
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    return out


def validate_custom_resource(obj: dict, schema: dict) -> list[str]:
    import jsonschema

    converted = structural_to_jsonschema(copy.deepcopy(schema))
    props = converted.setdefault("properties", {})
    # ObjectMeta is validated by the API server, not by the CRD schema.
    props["metadata"] = {"type": "object"}
    props.setdefault("apiVersion", {"type": "string"})
    props.setdefault("kind", {"type": "string"})
    validator = jsonschema.Draft4Validator(converted)
    errors = sorted(validator.iter_errors(obj), key=lambda e: list(e.absolute_path))
    return [f"{'.'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}" for e in errors]


# --------------------------------------------------------------------------- policy

def pod_spec_of(obj: dict) -> dict | None:
    kind = obj.get("kind")
    spec = obj.get("spec") or {}
    if kind == "Pod":
        return spec
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
        return ((spec.get("template") or {}).get("spec"))
    if kind == "CronJob":
        return ((((spec.get("jobTemplate") or {}).get("spec") or {}).get("template") or {}).get("spec"))
    return None


def restricted_pss_violations(pod: dict) -> list[str]:
    """The checks of the restricted Pod Security Standard (v1.33) that a manifest can
    show; what only the admission controller knows (defaults, AppArmor on the node)
    is left to it."""
    problems: list[str] = []
    psc = pod.get("securityContext") or {}
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(field):
            problems.append(f"{field} is true")
    allowed_volume_types = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
                            "persistentVolumeClaim", "projected", "secret"}
    for volume in pod.get("volumes") or []:
        kinds = set(volume) - {"name"}
        if not kinds <= allowed_volume_types:
            problems.append(f"volume {volume.get('name')} uses {', '.join(sorted(kinds - allowed_volume_types))}")
    if psc.get("runAsUser") == 0:
        problems.append("pod runAsUser is 0")
    containers = [("container", c) for c in pod.get("containers") or []]
    containers += [("initContainer", c) for c in pod.get("initContainers") or []]
    containers += [("ephemeralContainer", c) for c in pod.get("ephemeralContainers") or []]
    for what, c in containers:
        name = f"{what} {c.get('name')}"
        sc = c.get("securityContext") or {}
        if sc.get("privileged"):
            problems.append(f"{name}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{name}: allowPrivilegeEscalation must be false")
        if sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is not True:
            problems.append(f"{name}: runAsNonRoot must be true (pod or container)")
        if sc.get("runAsUser") == 0:
            problems.append(f"{name}: runAsUser is 0")
        seccomp = (sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{name}: seccompProfile.type must be RuntimeDefault or Localhost")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            problems.append(f"{name}: capabilities.drop must include ALL")
        extra = set(caps.get("add") or []) - {"NET_BIND_SERVICE"}
        if extra:
            problems.append(f"{name}: adds capabilities {', '.join(sorted(extra))}")
        for port in c.get("ports") or []:
            if port.get("hostPort"):
                problems.append(f"{name}: hostPort {port['hostPort']}")
    return problems


# --------------------------------------------------------------------------- manifests

class ManifestValidator:
    def __init__(self, kube_version: str, crds: CrdSchemas, tally: Tally, verbose: bool):
        self.kube_version = kube_version
        self.crds = crds
        self.tally = tally
        self.verbose = verbose
        self.no_schema: set[str] = set()

    def validate_objects(self, label: str, objects: list[dict], allow_kustomize: bool = False) -> None:
        import kubernetes_validate
        from kubernetes_validate.utils import SchemaNotFoundError, ValidationError

        # CRDs in the same set describe the custom resources next to them.
        for obj in objects:
            if obj.get("kind") == "CustomResourceDefinition":
                self.crds.add(obj)
        seen: set[tuple] = set()
        for obj in objects:
            what = f"{label}: {describe(obj)}"
            api_version = str(obj.get("apiVersion", ""))
            if allow_kustomize and api_version.startswith(KUSTOMIZE_API):
                # Kustomization/Component files are checked by building them.
                continue
            missing = [f for f in ("apiVersion", "kind") if not obj.get(f)]
            meta = obj.get("metadata") or {}
            if not (meta.get("name") or meta.get("generateName")):
                missing.append("metadata.name")
            if missing:
                self.tally.fail(what, f"missing {', '.join(missing)}")
                continue
            key = (api_version.split("/")[0] if "/" in api_version else "", obj["kind"],
                   meta.get("namespace"), meta.get("name"))
            if key in seen:
                self.tally.fail(what, "appears twice")
                continue
            seen.add(key)

            problems: list[str] = []
            pod = pod_spec_of(obj)
            if pod is not None:
                problems += [f"restricted Pod Security Standard: {p}" for p in restricted_pss_violations(pod)]
            try:
                kubernetes_validate.validate(obj, self.kube_version, strict=True)
            except ValidationError as e:
                path = ".".join(str(p) for p in e.path) or "<root>"
                problems.append(f"{path}: {e.message}")
            except SchemaNotFoundError:
                schema = self.crds.lookup(obj)
                if schema is None:
                    if problems:
                        self.tally.fail(what, "; ".join(problems))
                    else:
                        self.no_schema.add(f"{api_version} {obj['kind']}")
                        self.tally.skip(what, f"no schema for {api_version} {obj['kind']} (not a built-in kind, no CRD given)")
                    continue
                problems += validate_custom_resource(obj, schema)
            if problems:
                self.tally.fail(what, "; ".join(problems))
            else:
                self.tally.ok(what, self.verbose)

    def validate_paths(self, paths: list[str], allow_kustomize: bool, name: str | None = None) -> int:
        files = yaml_files(paths)
        transformer_configs = kustomize_configurations(files) if allow_kustomize else set()
        for path in files:
            label = name if name and len(files) == 1 else str(path)
            if path.resolve() in transformer_configs:
                self.tally.skip(label, "a kustomize transformer configuration, not objects")
                continue
            objects = load_documents(path, self.tally)
            if objects is None:
                continue
            if not objects:
                self.tally.skip(label, "no documents")
                continue
            self.validate_objects(label, objects, allow_kustomize)
        return len(files)


def cmd_manifests(args: argparse.Namespace, tally: Tally) -> None:
    crds = CrdSchemas()
    crds.add_from(args.crds, tally)
    v = ManifestValidator(args.kube_version, crds, tally, args.verbose)
    # Collect the CRDs of every file first, so a sample can be checked against a CRD
    # that comes later in the walk.
    crds.add_from(args.paths, tally)
    count = v.validate_paths(args.paths, args.allow_kustomize, args.name)
    if count == 0 and args.require_files:
        tally.fail(" ".join(args.paths), "no YAML files found")
    if args.expect:
        kinds: dict[str, int] = {}
        for path in yaml_files(args.paths):
            for doc in load_documents(path, Tally(None)) or []:
                kinds[doc.get("kind")] = kinds.get(doc.get("kind"), 0) + 1
        for spec in args.expect:
            kind, _, want = spec.partition("=")
            what = f"{args.name or ' '.join(args.paths)} has {want} {kind}"
            if kinds.get(kind, 0) == int(want):
                tally.ok(what, True)
            else:
                tally.fail(what, f"found {kinds.get(kind, 0)}")
    if crds.cel_rules:
        print(f"  note  {crds.cel_rules} CEL rule(s) (x-kubernetes-validations) not evaluated here; the API server checks them")


# --------------------------------------------------------------------------- rbac-sync

def normalise_rules(rules: list[dict]) -> set[tuple]:
    """Rules as a set of (group, resource, resourceName, verb) grants."""
    grants = set()
    for rule in rules or []:
        for group in rule.get("apiGroups") or [""]:
            for resource in rule.get("resources") or []:
                for name in rule.get("resourceNames") or ["*"]:
                    for verb in rule.get("verbs") or []:
                        grants.add((group, resource, name, verb))
    return grants


def find_object(objects: list[dict], kind: str, name_suffix: str = "") -> dict | None:
    for obj in objects:
        if obj.get("kind") == kind and str((obj.get("metadata") or {}).get("name", "")).endswith(name_suffix):
            return obj
    return None


def compare_rules(tally: Tally, what: str, expected: set, actual: set) -> None:
    if expected == actual:
        tally.ok(what, True)
    else:
        extra = sorted(actual - expected)
        missing = sorted(expected - actual)
        tally.fail(what, f"differs from config/rbac: extra {extra}, missing {missing}")


# --------------------------------------------------------------------------- helm

class HelmBackend:
    """`helm` on PATH when there is one, otherwise the helm-python-sdk bindings."""

    def __init__(self, chart: str, kube_version: str):
        self.chart = chart
        self.kube_version = kube_version
        self.binary = shutil.which("helm")
        if self.binary:
            self.name = subprocess.run([self.binary, "version", "--short"], capture_output=True,
                                       text=True).stdout.strip() or "helm"
        else:
            import helm_python  # noqa: F401  (fails loudly when neither is installed)

            self.name = f"helm-python-sdk (Helm SDK {helm_python.helm_sdk_version()})"

    def _values_file(self, values: dict) -> str:
        fd, path = tempfile.mkstemp(suffix=".json")
        with os.fdopen(fd, "w") as f:
            json.dump(values, f)
        return path

    def lint(self, values: dict) -> list[str]:
        """Problems of warning level or worse (helm lint --strict)."""
        if self.binary:
            vf = self._values_file(values)
            try:
                r = subprocess.run([self.binary, "lint", self.chart, "--strict", "-f", vf,
                                    "--kube-version", self.kube_version],
                                   capture_output=True, text=True)
            finally:
                os.unlink(vf)
            if r.returncode != 0:
                return [line for line in (r.stdout + r.stderr).splitlines()
                        if "[WARNING]" in line or "[ERROR]" in line or "Error" in line] or [r.stdout + r.stderr]
            return []
        import helm_python

        report = helm_python.lint(self.chart, values, strict=True, kube_version=f"v{self.kube_version}")
        problems = [f"{m.get('path')}: {m.get('error')}" for m in report.get("messages", []) if m.get("severity", 0) >= 2]
        return problems + list(report.get("errors") or [])

    def render(self, values: dict, release: str, namespace: str) -> dict[str, str]:
        """Rendered templates by name; raises RuntimeError when helm refuses."""
        if self.binary:
            vf = self._values_file(values)
            try:
                r = subprocess.run([self.binary, "template", release, self.chart, "-n", namespace,
                                    "-f", vf, "--kube-version", self.kube_version],
                                   capture_output=True, text=True)
            finally:
                os.unlink(vf)
            if r.returncode != 0:
                raise RuntimeError(r.stderr.strip() or r.stdout.strip())
            # `helm template` separates templates with "# Source: <path>" comments.
            out: dict[str, str] = {}
            current = "?"
            for chunk in re.split(r"^---\s*$", r.stdout, flags=re.M):
                m = re.search(r"^# Source: (.+)$", chunk, flags=re.M)
                if m:
                    current = m.group(1).strip()
                out[current] = out.get(current, "") + "\n---\n" + chunk
            return out
        import helm_python

        try:
            rendered = helm_python.Chart.load(self.chart).render(values, name=release, namespace=namespace)
        except helm_python.HelmError as e:
            raise RuntimeError(str(e)) from e
        return {k: v for k, v in rendered.items() if not k.endswith("NOTES.txt")}


def parse_rendered(rendered: dict[str, str]) -> list[dict]:
    objects: list[dict] = []
    for text in rendered.values():
        objects.extend(d for d in yaml.safe_load_all(text) if isinstance(d, dict))
    return objects


def cmd_helm(args: argparse.Namespace, tally: Tally) -> None:
    backend = HelmBackend(args.chart, args.kube_version)
    print(f"  using {backend.name}")
    release, namespace = "cdp-operator", "cdp-system"

    # (label, values, assertions on the rendered objects)
    def ns_names(objs, kind):
        return sorted((o["metadata"].get("namespace"), o["metadata"]["name"]) for o in objs if o["kind"] == kind)

    def operator_args(objs):
        dep = find_object(objs, "Deployment")
        return dep["spec"]["template"]["spec"]["containers"][0]["args"] if dep else []

    def operator_env(objs):
        dep = find_object(objs, "Deployment")
        container = dep["spec"]["template"]["spec"]["containers"][0] if dep else {}
        return container.get("image"), {e["name"]: e.get("value") for e in container.get("env", [])}

    def expect_images(objs, data_plane=None, postgres="postgres:17-bookworm"):
        """The data plane runs the operator's own image unless dataPlane.image says otherwise."""
        image, env = operator_env(objs)
        problems = []
        if env.get("CDP_IMAGE") != (data_plane or image):
            problems.append(f"CDP_IMAGE {env.get('CDP_IMAGE')!r}, expected {data_plane or image!r}")
        if env.get("CDP_POSTGRES_IMAGE") != postgres:
            problems.append(f"CDP_POSTGRES_IMAGE {env.get('CDP_POSTGRES_IMAGE')!r}, expected {postgres!r}")
        return problems

    def expect_default(objs):
        problems = expect_images(objs)
        kinds = {o["kind"] for o in objs}
        for k in ("Deployment", "ServiceAccount", "Service", "ClusterRole", "ClusterRoleBinding",
                  "Role", "RoleBinding", "CustomResourceDefinition"):
            if k not in kinds:
                problems.append(f"no {k}")
        crd_names = sorted(o["metadata"]["name"] for o in objs if o["kind"] == "CustomResourceDefinition")
        expected_crds = sorted(f"{p}.{GROUP}" for p in CRD_KINDS.values())
        if crd_names != expected_crds:
            problems.append(f"CRDs {crd_names}, expected {expected_crds}")
        for o in objs:
            if o["kind"] == "CustomResourceDefinition" and \
                    (o["metadata"].get("annotations") or {}).get("helm.sh/resource-policy") != "keep":
                problems.append(f"CRD {o['metadata']['name']} lacks helm.sh/resource-policy: keep")
        if ns_names(objs, "Role") != [(namespace, f"{release}-leader-election")]:
            problems.append(f"Roles {ns_names(objs, 'Role')}: expected only the leader-election Role")
        if "--namespaces" in operator_args(objs):
            problems.append("--namespaces given although watchNamespaces is empty")
        if "ServiceMonitor" in kinds:
            problems.append("ServiceMonitor rendered although serviceMonitor.enabled is false")
        for kind in ("PodMonitor", "PrometheusRule", "ConfigMap"):
            if kind in kinds:
                problems.append(f"{kind} rendered although its value is off")
        return problems

    def expect_dashboards_and_alerts(objs):
        """The chart ships monitoring/'s dashboard and rules as they are in the repository."""
        problems = []
        monitoring = os.path.join(args.chart, "monitoring")
        dashboard = find_object(objs, "ConfigMap", "-dashboard")
        if not dashboard:
            problems.append("no dashboard ConfigMap")
        else:
            if dashboard["metadata"]["labels"].get("grafana_dashboard") != "1":
                problems.append("the dashboard ConfigMap lacks the sidecar's label grafana_dashboard: \"1\"")
            with open(os.path.join(monitoring, "dashboard.json")) as f:
                if json.loads(dashboard["data"].get("cdp-platform.json", "null")) != json.load(f):
                    problems.append("the dashboard ConfigMap differs from monitoring/dashboard.json")
        rule = find_object(objs, "PrometheusRule")
        if not rule:
            problems.append("no PrometheusRule")
        else:
            with open(os.path.join(monitoring, "rules.yaml")) as f:
                if rule["spec"] != yaml.safe_load(f):
                    problems.append("the PrometheusRule differs from monitoring/rules.yaml")
            if rule["metadata"]["labels"].get("release") != "prometheus":
                problems.append("prometheusRules.labels not on the PrometheusRule")
        pod_monitor = find_object(objs, "PodMonitor")
        if not pod_monitor:
            problems.append("no PodMonitor")
        elif pod_monitor["spec"]["namespaceSelector"] != {"matchNames": ["team-a"]}:
            problems.append(f"PodMonitor namespaces {pod_monitor['spec']['namespaceSelector']}, expected the watched team-a")
        return problems

    def expect_namespaced(objs):
        problems = []
        expected = sorted([("team-a", release), ("team-b", release), (namespace, f"{release}-leader-election")])
        if ns_names(objs, "Role") != expected:
            problems.append(f"Roles {ns_names(objs, 'Role')}, expected {expected}")
        if ns_names(objs, "RoleBinding") != expected:
            problems.append(f"RoleBindings {ns_names(objs, 'RoleBinding')}, expected {expected}")
        if ns_names(objs, "ClusterRoleBinding"):
            problems.append("ClusterRoleBinding rendered although watchNamespaces is set")
        if any(o["kind"] == "ClusterRole" and o["metadata"]["name"] == release for o in objs):
            problems.append("operator ClusterRole rendered although watchNamespaces is set")
        a = operator_args(objs)
        if "--namespaces" not in a or a[a.index("--namespaces") + 1] != "team-a,team-b":
            problems.append(f"operator args {a} lack --namespaces team-a,team-b")
        return problems

    def expect_monitoring(objs):
        sm = find_object(objs, "ServiceMonitor")
        svc = find_object(objs, "Service", "-metrics")
        if not sm or not svc:
            return ["ServiceMonitor or metrics Service missing"]
        problems = expect_images(objs)
        if sm["spec"]["selector"]["matchLabels"].items() - svc["metadata"]["labels"].items():
            problems.append("ServiceMonitor selector does not match the metrics Service labels")
        if sm["spec"]["endpoints"][0]["port"] not in [p["name"] for p in svc["spec"]["ports"]]:
            problems.append("ServiceMonitor endpoint port is not a port of the metrics Service")
        if any(o["kind"] == "CustomResourceDefinition" for o in objs):
            problems.append("CRDs rendered although crds.enabled is false")
        return problems

    def expect_own_images(objs):
        return expect_images(objs, data_plane="registry.example/cdp:e2e", postgres="registry.example/postgres:17")

    def expect_nothing(objs):
        return []

    cases = [
        ("default values", {}, expect_default),
        ("watchNamespaces [team-a, team-b]", {"watchNamespaces": ["team-a", "team-b"]}, expect_namespaced),
        ("serviceMonitor on, crds off, digest, extras",
         {"serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
          "crds": {"enabled": False},
          "image": {"repository": "registry.example/cdp", "digest": "sha256:" + "a" * 64},
          "extraArgs": ["--example"], "extraEnv": [{"name": "RUST_LOG", "value": "info"}],
          "podAnnotations": {"a": "b"}, "tolerations": [{"operator": "Exists"}],
          "rbac": {"aggregateToDefaultRoles": False}, "replicaCount": 2},
         expect_monitoring),
        ("dashboard, alerts and PodMonitor on",
         {"grafanaDashboard": {"enabled": True}, "prometheusRules": {"enabled": True, "labels": {"release": "prometheus"}},
          "podMonitor": {"enabled": True}, "watchNamespaces": ["team-a"]},
         expect_dashboards_and_alerts),
        ("no ServiceAccount / RBAC created", {"serviceAccount": {"create": False, "name": "existing"},
                                               "rbac": {"create": False}}, expect_nothing),
        ("data plane and PostgreSQL images", {"dataPlane": {"image": "registry.example/cdp:e2e"},
                                              "postgres": {"image": "registry.example/postgres:17"}},
         expect_own_images),
    ]
    crds = CrdSchemas()
    crds.add_from(args.crds, tally)
    validator = ManifestValidator(args.kube_version, crds, tally, args.verbose)
    rendered_default: list[dict] = []
    for label, values, check in cases:
        what = f"helm ({label})"
        problems = backend.lint(values)
        if problems:
            tally.fail(f"{what} lint", "; ".join(problems))
        else:
            tally.ok(f"{what} lint", True)
        try:
            objs = parse_rendered(backend.render(values, release, namespace))
        except RuntimeError as e:
            tally.fail(f"{what} template", str(e))
            continue
        if not rendered_default:
            rendered_default = objs
        problems = check(objs)
        if problems:
            tally.fail(f"{what} expectations", "; ".join(problems))
        else:
            tally.ok(f"{what} expectations", True)
        validator.validate_objects(f"helm ({label})", objs)
        if args.output_dir:
            os.makedirs(args.output_dir, exist_ok=True)
            slug = re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")
            with open(os.path.join(args.output_dir, f"{slug}.yaml"), "w") as f:
                yaml.safe_dump_all(objs, f, sort_keys=False)

    # The schema must refuse what the chart cannot honour.
    bad_values = [
        ("unknown top-level key", {"replicas": 2}),
        ("unknown nested key", {"image": {"repo": "x"}}),
        ("watchNamespaces not a list", {"watchNamespaces": "team-a"}),
        ("invalid namespace name", {"watchNamespaces": ["Team_A"]}),
        ("port out of range", {"metrics": {"port": 70000}}),
        ("bad pull policy", {"image": {"pullPolicy": "Sometimes"}}),
        ("empty PostgreSQL image", {"postgres": {"image": ""}}),
        ("a dashboard without a sidecar label", {"grafanaDashboard": {"enabled": True, "labels": {"grafana_dashboard": None}}}),
    ]
    for label, values in bad_values:
        what = f"helm values schema rejects {label}"
        try:
            backend.render(values, release, namespace)
        except RuntimeError:
            tally.ok(what, True)
        else:
            tally.fail(what, f"{values} was accepted")

    # The chart's CRDs must be the generated ones (apart from the keep annotation).
    generated: dict[str, dict] = {}
    for path in yaml_files(args.crds):
        for doc in load_documents(path, tally) or []:
            if doc.get("kind") == "CustomResourceDefinition":
                generated[doc["metadata"]["name"]] = doc
    if generated and rendered_default:
        for obj in rendered_default:
            if obj.get("kind") != "CustomResourceDefinition":
                continue
            name = obj["metadata"]["name"]
            chart_crd = copy.deepcopy(obj)
            annotations = chart_crd["metadata"].get("annotations") or {}
            annotations.pop("helm.sh/resource-policy", None)
            if not annotations:
                chart_crd["metadata"].pop("annotations", None)
            what = f"chart CRD {name} == generated CRD"
            if name not in generated:
                tally.fail(what, "no generated CRD of that name")
            elif chart_crd != generated[name]:
                tally.fail(what, "differs: regenerate the chart's templates/crds")
            else:
                tally.ok(what, True)

    # The chart's cluster-wide rules must be exactly config/rbac's.
    if args.rbac_config and rendered_default:
        kustomize_role = None
        for path in yaml_files([args.rbac_config]):
            for doc in load_documents(path, tally) or []:
                if doc.get("kind") == "ClusterRole" and doc["metadata"]["name"] == "cdp-operator":
                    kustomize_role = doc
        chart_role = next((o for o in rendered_default if o["kind"] == "ClusterRole"
                           and o["metadata"]["name"] == release), None)
        if kustomize_role is None or chart_role is None:
            tally.fail("rbac sync", "ClusterRole cdp-operator not found in config/rbac or the chart")
        else:
            compare_rules(tally, "chart ClusterRole rules == config/rbac ClusterRole rules",
                          normalise_rules(kustomize_role["rules"]), normalise_rules(chart_role["rules"]))
        for suffix in ("-leader-election",):
            k = next((d for p in yaml_files([args.rbac_config]) for d in (load_documents(p, tally) or [])
                      if d.get("kind") == "Role" and d["metadata"]["name"].endswith(suffix)), None)
            c = find_object(rendered_default, "Role", suffix)
            if k and c:
                compare_rules(tally, "chart leader-election Role == config/rbac leader-election Role",
                              normalise_rules(k["rules"]), normalise_rules(c["rules"]))
            else:
                tally.fail("rbac sync", "leader-election Role not found in config/rbac or the chart")


# --------------------------------------------------------------------------- argo

def run_health_lua(script: str, obj: dict) -> dict:
    """Run an Argo CD health script the way Argo CD does: `obj` global, Lua 5.1, no
    io/os/require (gopher-lua in Argo CD opens base, table, string, math only)."""
    import lupa.lua51 as lupa

    lua = lupa.LuaRuntime(unpack_returned_tuples=True)
    g = lua.globals()
    for name in ("io", "os", "require", "package", "dofile", "loadfile", "debug", "load", "loadstring"):
        g[name] = None
    g.obj = lua.table_from(obj, recursive=True)
    result = lua.execute(script)
    if result is None:
        return {}
    return {k: result[k] for k in ("status", "message") if result[k] is not None}


def cmd_argo(args: argparse.Namespace, tally: Tally) -> None:
    base = Path(args.dir)
    script = (base / "health.lua").read_text()
    tests = yaml.safe_load((base / "health_test.yaml").read_text())["tests"]
    if not tests:
        tally.fail("argo health tests", "health_test.yaml has no tests")
    for test in tests:
        what = f"argo health {test['inputPath']}"
        obj = yaml.safe_load((base / test["inputPath"]).read_text())
        expected = test["healthStatus"]
        try:
            got = run_health_lua(script, obj)
        except Exception as e:  # a Lua error is a test failure, not a crash
            tally.fail(what, f"Lua error: {e}")
            continue
        if got.get("status") != expected.get("status") or \
                ("message" in expected and got.get("message") != expected["message"]):
            tally.fail(what, f"expected {expected}, got {got}")
        else:
            tally.ok(f"{what} -> {got.get('status')}", True)

    # Every test input is one of our kinds, and every kind has at least one test.
    kinds_tested = {yaml.safe_load((base / t["inputPath"]).read_text()).get("kind") for t in tests}
    missing = sorted(set(CRD_KINDS) - kinds_tested)
    if missing:
        tally.fail("argo health tests cover every kind", f"no test for {missing}")
    else:
        tally.ok("argo health tests cover every kind", True)

    # The kustomize output installs the script, unchanged, under one key per kind.
    if args.built_configmap:
        docs = [d for d in yaml.safe_load_all(Path(args.built_configmap).read_text()) if d]
        cm = next((d for d in docs if d.get("kind") == "ConfigMap" and d["metadata"]["name"] == "argocd-cm"), None)
        what = "argocd-cm carries health.lua for every kind"
        if cm is None:
            tally.fail(what, "no ConfigMap argocd-cm in the kustomize output")
        else:
            data = cm.get("data") or {}
            bad = [k for k in CRD_KINDS if data.get(f"resource.customizations.health.{GROUP}_{k}") != script]
            if bad:
                tally.fail(what, f"missing or different for {bad}")
            elif data.get("url") is None:
                tally.fail(what, "merge dropped the existing argocd-cm data")
            else:
                tally.ok(what, True)


# --------------------------------------------------------------------------- summary

def cmd_summary(args: argparse.Namespace, tally: Tally) -> int:
    d = tally.data
    if d["failures"]:
        print("\nFailures:")
        for f in d["failures"]:
            print(f"  - {f}")
    print(f"\nvalidate-manifests: {d['passed']} passed, {d['failed']} failed, {d['skipped']} skipped")
    return 1 if d["failed"] else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tally", help="JSON file accumulating the counts across calls")
    parser.add_argument("--kube-version", default="1.33.0")
    parser.add_argument("-v", "--verbose", action="store_true", help="print passing objects too")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("manifests")
    p.add_argument("paths", nargs="+")
    p.add_argument("--crds", action="append", default=[], help="file or directory with CRDs")
    p.add_argument("--allow-kustomize", action="store_true", help="skip kustomization files")
    p.add_argument("--require-files", action="store_true", help="fail when no YAML file is found")
    p.add_argument("--name", help="what to call a single input file in the output")
    p.add_argument("--expect", action="append", default=[], metavar="KIND=N",
                   help="fail unless the files hold exactly N objects of KIND")

    p = sub.add_parser("helm")
    p.add_argument("chart")
    p.add_argument("--crds", action="append", default=[])
    p.add_argument("--rbac-config", help="config/rbac directory to compare the chart's RBAC with")
    p.add_argument("--output-dir", help="keep the rendered manifests here")

    p = sub.add_parser("argo")
    p.add_argument("dir")
    p.add_argument("--built-configmap", help="output of kustomize with the component applied")

    sub.add_parser("summary")

    p = sub.add_parser("template")
    p.add_argument("chart")
    p.add_argument("--release", required=True)
    p.add_argument("--namespace", required=True)
    p.add_argument("--values", required=True, help="JSON or YAML file")

    args = parser.parse_args()
    if args.command == "template":
        with open(args.values) as f:
            values = yaml.safe_load(f) or {}
        rendered = HelmBackend(args.chart, args.kube_version).render(values, args.release, args.namespace)
        for name, text in sorted(rendered.items()):
            if text.strip():
                print(f"---\n# Source: {name}\n{text.strip()}")
        return 0
    tally = Tally(args.tally)
    tally.data.setdefault("failures", [])
    rc = 0
    if args.command == "manifests":
        cmd_manifests(args, tally)
    elif args.command == "helm":
        cmd_helm(args, tally)
    elif args.command == "argo":
        cmd_argo(args, tally)
    elif args.command == "summary":
        rc = cmd_summary(args, tally)
    tally.save()
    if args.command != "summary":
        print(f"  -> {args.command}: {tally.section_failed} failure(s)")
        rc = 1 if tally.section_failed else 0
    return rc


if __name__ == "__main__":
    sys.exit(main())
