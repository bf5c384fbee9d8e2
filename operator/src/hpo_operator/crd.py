"""Render the HpoStudy CustomResourceDefinition from the pydantic models.

CRDs need a structural OpenAPI schema: no `$ref` (the `$defs` are inlined), a type on every node,
`nullable` instead of `anyOf [..., null]`. `make crds` writes the result to crds/ and the chart;
`make verify` fails when the committed files drift from what the models say.

Run as `python -m hpo_operator.crd` to print the CRD as YAML.
"""

from __future__ import annotations

import copy
import sys
from typing import Any

import yaml

from hpo_operator import models

# Fields that a started study must keep: Optuna cannot change directions or a parameter's
# distribution, the storage holds the study, and the imported trials are part of it. The operator
# sets status.startedAt on the study's first pass with its database ready (before an import) and
# never removes it; until then (an invalid spec, a missing Secret, a database not yet reachable)
# they may change, so that fixing a spec is an edit, not a delete. Keyed on startedAt rather than
# on a condition: a running study edited into an invalid spec is still a started study.
IMMUTABLE_ONCE_STARTED = ("objective", "searchSpace", "storage", "importFrom")
_NEVER_STARTED = "!has(oldSelf.status) || !has(oldSelf.status.startedAt)"

PRINTER_COLUMNS = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Trials", "type": "string", "jsonPath": ".status.progress", "description": "finished/total"},
    {"name": "Running", "type": "integer", "jsonPath": ".status.trials.running"},
    {
        "name": "Waiting",
        "type": "integer",
        "jsonPath": ".status.trials.waiting",
        "description": "dispatched trials whose pod has not started",
    },
    {
        "name": "Best",
        "type": "string",
        "jsonPath": ".status.bestValue",
        "description": "the best value to 4 significant digits (full value: .status.bestTrial.value)",
    },
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    # -o wide
    {"name": "Sampler", "type": "string", "jsonPath": ".status.sampler", "priority": 1},
    {"name": "Parallelism", "type": "integer", "jsonPath": ".status.parallelism", "priority": 1},
    {"name": "Failed", "type": "integer", "jsonPath": ".status.trials.failed", "priority": 1},
    {"name": "Preempted", "type": "integer", "jsonPath": ".status.trials.preemptions", "priority": 1},
    {"name": "Queue", "type": "string", "jsonPath": ".spec.queueName", "priority": 1},
]


def _structural(node: Any, defs: dict[str, Any]) -> Any:
    """Inline `$ref`s and rewrite pydantic's JSON Schema into what the API server accepts."""
    if isinstance(node, list):
        return [_structural(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = copy.deepcopy(defs[node["$ref"].split("/")[-1]])
        return _structural({**target, **{k: v for k, v in node.items() if k != "$ref"}}, defs)
    if "anyOf" in node:  # Optional[X]: pydantic's anyOf [X, null] becomes a nullable X
        options = [option for option in node["anyOf"] if option.get("type") != "null"]
        rest = {k: v for k, v in node.items() if k != "anyOf"}
        merged = _structural({**options[0], **rest}, defs) if len(options) == 1 else rest
        merged["nullable"] = True
        merged.pop("default", None)
        return merged
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in ("title", "$defs") or (key == "additionalProperties" and value is False):
            continue  # unknown fields are pruned by the API server; `false` is not allowed in CRDs
        if key == "exclusiveMinimum":  # JSON Schema's number form -> OpenAPI 3.0's boolean form
            out["minimum"], out["exclusiveMinimum"] = value, True
            continue
        if key == "properties":
            out[key] = {name: _structural(prop, defs) for name, prop in value.items()}
        elif key == "additionalProperties" and value is True:
            out["x-kubernetes-preserve-unknown-fields"] = True
        else:
            out[key] = _structural(value, defs)
    if out.get("x-kubernetes-preserve-unknown-fields") and out.get("type") == "object":
        out.pop("additionalProperties", None)
    return out


def openapi_schema(model: type[models.Model]) -> dict[str, Any]:
    schema = model.model_json_schema(by_alias=True, mode="validation")
    return dict(_structural(schema, schema.get("$defs", {})))


def render() -> dict[str, Any]:
    spec = openapi_schema(models.HpoStudySpec)
    status = openapi_schema(models.HpoStudyStatus)
    rules = [
        {
            "rule": f"{_NEVER_STARTED} || (has(self.spec.{field}) ? has(oldSelf.spec.{field}) && "
            f"self.spec.{field} == oldSelf.spec.{field} : !has(oldSelf.spec.{field}))",
            "message": f"spec.{field} cannot change once the study has started; create a new HpoStudy instead",
        }
        for field in IMMUTABLE_ONCE_STARTED
    ]
    rules.append(
        {
            "rule": f"self.metadata.name.size() <= {models.MAX_NAME_LENGTH}",
            "message": f"metadata.name may have at most {models.MAX_NAME_LENGTH} characters: the study's Secret "
            f"<name>{models.READONLY_SECRET_SUFFIX} must be a valid name too",
        }
    )
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{models.PLURAL}.{models.GROUP}"},
        "spec": {
            "group": models.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": models.KIND,
                "plural": models.PLURAL,
                "singular": models.KIND.lower(),
                "shortNames": ["hpo", "hpos"],
                "categories": ["all"],
            },
            "versions": [
                {
                    "name": models.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": "A hyperparameter optimisation study run as trial pods.",
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec,
                                "status": status,
                            },
                            "x-kubernetes-validations": rules,
                        }
                    },
                }
            ],
        },
    }


def to_yaml() -> str:
    header = "# Generated from operator/src/hpo_operator/models.py by `make crds`; do not edit by hand.\n"
    return header + yaml.safe_dump(render(), sort_keys=False, width=120)


if __name__ == "__main__":
    sys.stdout.write(to_yaml())
