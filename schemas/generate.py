"""Write each record's JSON Schema file from its model: ``python -m smelter.schemas.generate``.

The committed ``*.schema.json`` files are the language-neutral contract; tests/test_schemas.py
fails when they drift from the models, so a field change always shows up in review as both.
"""

from __future__ import annotations

import json
from pathlib import Path

from smelter.schemas.records import RECORDS, Record

SCHEMA_DIR = Path(__file__).resolve().parent


def render_schema(name: str, model: type[Record]) -> str:
    schema = model.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = f"https://smelter.dev/schemas/{name}.v{model.SCHEMA_VERSION}.schema.json"
    schema["x-schema-version"] = model.SCHEMA_VERSION
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def main() -> None:
    for name, model in RECORDS.items():
        (SCHEMA_DIR / f"{name}.schema.json").write_text(render_schema(name, model))
        print(f"wrote {name}.schema.json")


if __name__ == "__main__":
    main()
