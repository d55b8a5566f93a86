"""The vendor's API v2 as the contract tests need it: routes, field names, types and
required fields, kept in this folder (vendor-api-v2.json) so that a lone clone tests
itself.

`derive` makes that file from the OpenAPI transcription in ../shared/reference/,
keeping structure only: no descriptions, examples or other prose. Run this module
to write it again after the reference changes:

    .venv/bin/python -m tests.contract.vendor ../shared/reference/ezcards-v2-openapi.yaml
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml

CONTRACT = Path(__file__).with_name("vendor-api-v2.json")
#: Where the reference lies beside a checkout, as the team's machines lay it out.
REFERENCE = Path(__file__).resolve().parents[3] / "shared/reference/ezcards-v2-openapi.yaml"
#: What a schema, an operation or a parameter keeps: the facts, not the prose.
_KEPT = {
    "openapi", "paths", "components", "schemas", "securitySchemes", "type", "format",
    "required", "properties", "items", "enum", "nullable", "allOf", "oneOf", "anyOf",
    "$ref", "additionalProperties", "minimum", "maximum", "minItems", "maxItems",
    "minLength", "maxLength", "parameters", "requestBody", "responses", "content",
    "schema", "name", "in", "operationId", "security", "scheme", "bearerFormat",
}  # fmt: skip
_METHODS = {"get", "post", "put", "patch", "delete"}


def derive(reference: dict[str, Any]) -> dict[str, Any]:
    return _facts(reference, parent="")


def load() -> dict[str, Any]:
    """The committed contract, with the errata the project decided applied
    (../shared/reference/README.md): PINs are strings."""
    document: dict[str, Any] = json.loads(CONTRACT.read_text())
    pin = document["components"]["schemas"]["CodeResponse"]["properties"]["pinCode"]
    pin["type"] = "string"
    return document


def _facts(node: Any, parent: str) -> Any:
    if isinstance(node, list):
        return [_facts(item, parent) for item in node]
    if not isinstance(node, dict):
        return node
    # Under these, every key is a name (a path, a status, a field, a media type).
    names_only = parent in {"paths", "schemas", "properties", "responses", "content",
                            "securitySchemes"} or parent.startswith("/")  # fmt: skip
    return {
        key: _facts(value, key)
        for key, value in node.items()
        if names_only or key in _KEPT or key in _METHODS
    }


if __name__ == "__main__":
    source = Path(sys.argv[1]) if len(sys.argv) > 1 else REFERENCE
    facts = derive(yaml.safe_load(source.read_text()))
    CONTRACT.write_text(json.dumps(facts, indent=1, sort_keys=True) + "\n")
    print(f"wrote {CONTRACT}")
