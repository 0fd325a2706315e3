"""`kubectl kustomize` semantics, offline, for the subset k8s/ uses (no kubectl or kustomize here).

Supported: `resources` (files, and directories holding a kustomization.yaml), `namespace`,
`patches` (inline or `path`; a YAML list is an RFC 6902 JSON patch with add/remove/replace/test, a
mapping is a strategic-merge patch: maps merged, lists of named items merged by name), patch
`target` by kind, name and equality `labelSelector`, and `configMapGenerator` (literals and files,
with the content-hash suffix and the references in workloads rewritten). Any other key is refused:
a renderer that skipped one would check manifests other than those kubectl applies.
"""
from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import yaml

SUPPORTED = {"apiVersion", "kind", "namespace", "resources", "patches", "configMapGenerator"}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition",
                  "PersistentVolume", "StorageClass", "PriorityClass"}


class RenderError(Exception):
    pass


def render(directory: Path) -> list[dict[str, Any]]:
    directory = Path(directory)
    spec = yaml.safe_load((directory / "kustomization.yaml").read_text()) or {}
    unknown = set(spec) - SUPPORTED
    if unknown:
        raise RenderError(f"{directory}: kustomization keys not supported by this renderer: {sorted(unknown)}")
    docs: list[dict[str, Any]] = []
    for entry in spec.get("resources", []):
        path = (directory / entry).resolve()
        if path.is_dir():
            docs += render(path)
        else:
            docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    renames = {}
    for generator in spec.get("configMapGenerator", []):
        configmap, old_name = _generate_configmap(directory, generator)
        renames[old_name] = configmap["metadata"]["name"]
        docs.append(configmap)
    if "namespace" in spec:
        for doc in docs:
            if doc["kind"] not in CLUSTER_SCOPED:
                doc.setdefault("metadata", {})["namespace"] = spec["namespace"]
    for patch in spec.get("patches", []):
        body = patch.get("patch")
        if body is None:
            body = (directory / patch["path"]).read_text()
        parsed = yaml.safe_load(body)
        targets = [d for d in docs if _selected(d, patch.get("target"), parsed)]
        if not targets:
            raise RenderError(f"{directory}: a patch selects no resource ({patch.get('target')})")
        for doc in targets:
            patched = _json_patch(doc, parsed) if isinstance(parsed, list) else _merge(doc, parsed)
            doc.clear()
            doc.update(patched)
    if renames:
        for doc in docs:
            _rename_configmap_refs(doc, renames)
    return docs


def _selected(doc: dict, target: dict | None, parsed: Any) -> bool:
    if target is None:  # a strategic-merge patch names its target itself
        if not isinstance(parsed, dict):
            raise RenderError("a JSON patch needs a target")
        return doc["kind"] == parsed.get("kind") and doc["metadata"]["name"] == parsed["metadata"]["name"]
    unknown = set(target) - {"kind", "name", "labelSelector"}
    if unknown:
        raise RenderError(f"patch target keys not supported: {sorted(unknown)}")
    if "kind" in target and doc["kind"] != target["kind"]:
        return False
    if "name" in target and doc["metadata"]["name"] != target["name"]:
        return False
    if "labelSelector" in target:
        labels = doc["metadata"].get("labels", {})
        for term in target["labelSelector"].split(","):
            key, _, value = term.partition("=")
            if labels.get(key.strip()) != value.strip():
                return False
    return True


def _pointer(path: str) -> list[str]:
    return [part.replace("~1", "/").replace("~0", "~") for part in path.lstrip("/").split("/")]


def _json_patch(doc: dict, operations: list[dict]) -> dict:
    doc = copy.deepcopy(doc)
    for op in operations:
        *parents, last = _pointer(op["path"])
        node: Any = doc
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        kind = op["op"]
        if kind == "test":
            current = node[int(last)] if isinstance(node, list) else node.get(last)
            if current != op["value"]:
                raise RenderError(f"JSON patch test failed at {op['path']}: {current!r} != {op['value']!r}")
        elif kind == "remove":
            del node[int(last) if isinstance(node, list) else last]
        elif kind in ("add", "replace"):
            if isinstance(node, list):
                if last == "-":
                    node.append(op["value"])
                elif kind == "add":
                    node.insert(int(last), op["value"])
                else:
                    node[int(last)] = op["value"]
            else:
                if kind == "replace" and last not in node:
                    raise RenderError(f"JSON patch replace of a missing path {op['path']}")
                node[last] = op["value"]
        else:
            raise RenderError(f"JSON patch op not supported: {kind}")
    return doc


def _merge(base: Any, patch: Any) -> Any:
    if isinstance(base, dict) and isinstance(patch, dict):
        out = copy.deepcopy(base)
        for key, value in patch.items():
            out[key] = _merge(base[key], value) if key in base else copy.deepcopy(value)
        return out
    if isinstance(base, list) and isinstance(patch, list) and all(
            isinstance(i, dict) and "name" in i for i in base + patch):
        out = copy.deepcopy(base)
        for item in patch:
            match = next((i for i, b in enumerate(out) if b["name"] == item["name"]), None)
            if match is None:
                out.append(copy.deepcopy(item))
            else:
                out[match] = _merge(out[match], item)
        return out
    return copy.deepcopy(patch)


def _generate_configmap(directory: Path, generator: dict) -> tuple[dict, str]:
    unknown = set(generator) - {"name", "namespace", "files", "literals"}
    if unknown:
        raise RenderError(f"configMapGenerator keys not supported: {sorted(unknown)}")
    data: dict[str, str] = {}
    for entry in generator.get("files", []):
        key, _, source = entry.partition("=") if "=" in entry else (Path(entry).name, "", entry)
        data[key] = (directory / source).read_text()
    for literal in generator.get("literals", []):
        key, _, value = literal.partition("=")
        data[key] = value
    configmap = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": generator["name"]}, "data": data}
    if "namespace" in generator:
        configmap["metadata"]["namespace"] = generator["namespace"]
    digest = hashlib.sha256(json.dumps(configmap, sort_keys=True).encode()).hexdigest()[:10]
    configmap["metadata"]["name"] = f"{generator['name']}-{digest}"
    return configmap, generator["name"]


def _rename_configmap_refs(node: Any, renames: dict[str, str]) -> None:
    if isinstance(node, dict):
        for key in ("configMap", "configMapRef", "configMapKeyRef"):
            ref = node.get(key)
            if isinstance(ref, dict) and ref.get("name") in renames:
                ref["name"] = renames[ref["name"]]
        for value in node.values():
            _rename_configmap_refs(value, renames)
    elif isinstance(node, list):
        for value in node:
            _rename_configmap_refs(value, renames)
