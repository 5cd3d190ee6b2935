"""Checks a JSON Schema with Python `jsonschema` (Draft 2020-12 `check_schema`) and validates each
instance file against it. Used by tests/schema_tools.rs; run with `python -W error` so that any
warning fails. Prints one JSON line per instance: {"file": ..., "valid": bool, "paths": [...]},
where paths are the JSON Pointers of the failing values. Exit 2 if the schema is not valid."""
import json
import sys

import jsonschema


def pointer(path):
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in path)


def main():
    with open(sys.argv[1], encoding="utf-8") as f:
        schema = json.load(f)
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.exceptions.SchemaError as e:
        print(f"schema is not valid: {e}", file=sys.stderr)
        sys.exit(2)
    validator = jsonschema.Draft202012Validator(schema)
    for name in sys.argv[2:]:
        with open(name, encoding="utf-8") as f:
            instance = json.load(f)
        paths = sorted({pointer(e.absolute_path) for e in validator.iter_errors(instance)})
        print(json.dumps({"file": name, "valid": not paths, "paths": paths}))


main()
