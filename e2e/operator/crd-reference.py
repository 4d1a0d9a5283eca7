#!/usr/bin/env python3
"""Print the ChatCluster field reference (Markdown) from crds/chatcluster.yaml.

Used to write the "Field reference" section of docs/operator.md:
    python3 e2e/operator/crd-reference.py > /tmp/ref.md
Big Kubernetes types (resources, topology spread constraints, conditions) are linked, not
expanded.
"""
import sys
import yaml

EXTERNAL = {
    "resources": "[ResourceRequirements](https://kubernetes.io/docs/reference/kubernetes-api/workload-resources/pod-v1/#resources)",
    "topologySpreadConstraints": "[[]TopologySpreadConstraint](https://kubernetes.io/docs/concepts/scheduling-eviction/topology-spread-constraints/)",
    "metricsNamespaceSelector": "[LabelSelector](https://kubernetes.io/docs/reference/kubernetes-api/common-definitions/label-selector/)",
    "conditions": "[[]Condition](https://kubernetes.io/docs/reference/kubernetes-api/common-definitions/object-meta/) (`type`, `status`, `reason`, `message`, `lastTransitionTime`, `observedGeneration`)",
}


def typ(s):
    t = s.get("type", "object")
    if t == "array":
        return "[]" + typ(s.get("items", {}))
    if "enum" in s:
        return " \\| ".join(f"`{e}`" for e in s["enum"])
    if t == "object" and "additionalProperties" in s and "properties" not in s:
        return "map[string]" + typ(s["additionalProperties"])
    return t


def rows(schema, path, out):
    req = set(schema.get("required", []))
    for name, s in schema.get("properties", {}).items():
        p = f"{path}.{name}" if path else name
        desc = " ".join(s.get("description", "").split())
        notes = []
        if name in req:
            notes.append("**required**")
        if "default" in s and not isinstance(s["default"], dict):
            d = s["default"]
            notes.append(f"default `{str(d).lower() if isinstance(d, bool) else d}`")
        for k, label in (("minimum", "≥"), ("maximum", "≤"), ("minLength", "min length"), ("minItems", "min items")):
            if k in s:
                v = s[k]
                notes.append(f"{label} {int(v) if float(v).is_integer() else v}")
        if "pattern" in s:
            notes.append(f"pattern `{s['pattern']}`")
        for v in s.get("x-kubernetes-validations", []) + (s.get("items", {}) or {}).get("x-kubernetes-validations", []):
            notes.append(f"rule: {v.get('message', v['rule'])}")
        t = EXTERNAL.get(name, typ(s))
        out.append(f"| `{p}` | {t} | {desc} {'; '.join(notes)} |".replace("  ", " "))
        if name in EXTERNAL:
            continue
        inner = s.get("items", s) if s.get("type") == "array" else s
        if "properties" in inner:
            rows(inner, p + ("[]" if s.get("type") == "array" else ""), out)


def main():
    crd = yaml.safe_load(open(sys.argv[1] if len(sys.argv) > 1 else "crds/chatcluster.yaml"))
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]
    for part in ("spec", "status"):
        print(f"\n### `{part}`\n")
        print("| field | type | description |")
        print("|---|---|---|")
        out = []
        rows(schema[part], part, out)
        print("\n".join(out))


main()
