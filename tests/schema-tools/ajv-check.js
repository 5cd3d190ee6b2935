// Compiles a JSON Schema with ajv in strict mode (every strict option an error, none merely
// logged) and validates each instance file against it. Used by tests/schema_tools.rs.
// Usage: NODE_PATH=.deps/schema-node/node_modules node ajv-check.js SCHEMA [INSTANCE...]
// Prints one JSON line per instance: {"file": ..., "valid": bool, "paths": [...]}, where paths
// are the JSON Pointers of the failing values.
// Exit 2 if the schema does not compile or ajv warns about it.
"use strict";
const fs = require("fs");
const Ajv2020 = require("ajv/dist/2020").default;

const warnings = [];
const logger = {
  log: () => {},
  warn: (...a) => warnings.push(a.join(" ")),
  error: (...a) => warnings.push(a.join(" ")),
};
const ajv = new Ajv2020({
  strict: true,
  strictSchema: true,
  strictNumbers: true,
  strictTypes: true,
  strictTuples: true,
  strictRequired: true,
  allErrors: true,
  logger,
});
let validate;
try {
  validate = ajv.compile(JSON.parse(fs.readFileSync(process.argv[2], "utf8")));
} catch (e) {
  console.error("schema does not compile: " + e.message);
  process.exit(2);
}
if (warnings.length) {
  console.error("ajv warnings:\n" + warnings.join("\n"));
  process.exit(2);
}
for (const file of process.argv.slice(3)) {
  const valid = validate(JSON.parse(fs.readFileSync(file, "utf8")));
  const paths = valid ? [] : [...new Set(validate.errors.map((e) => e.instancePath))].sort();
  console.log(JSON.stringify({ file, valid, paths }));
}
