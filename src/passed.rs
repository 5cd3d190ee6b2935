//! Agent input fields that take either their value or a typed reference to another task's
//! output (`{"$output": "<task>/<JSON Pointer>"}`, see [`crate::batch::template`]). The reference
//! is replaced by the value before the attempt starts, so an agent sees [`Passed::Value`] only;
//! the schema of such a field is `anyOf: [<the field's own schema>, OutputRef]`.

use std::borrow::Cow;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

use crate::task_error::{ErrorKind, TaskError};

/// A task id, then an RFC 6901 JSON Pointer (`~` only as `~0` or `~1`).
pub const OUTPUT_PATTERN: &str = r"^[A-Za-z0-9_.-]{1,128}(/([^~]|~[01])*)*$";
/// An RFC 6901 JSON Pointer.
pub const POINTER_PATTERN: &str = r"^(/([^~]|~[01])*)*$";

/// A typed reference as the schema and serde see it; its meaning is checked by
/// [`crate::batch::template::typed_ref`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(
    title = "OutputRef",
    description = "A typed reference: replaced, before the task starts, by the value at a JSON Pointer in another task's output (which must be a dependency), its JSON type kept."
)]
pub struct OutputRef {
    /// `<task_id>` then a JSON Pointer into its output, e.g. `build/exit_code` or
    /// `graph/structured_content/entities`.
    #[serde(rename = "$output")]
    #[schemars(regex(pattern = OUTPUT_PATTERN))]
    pub output: String,
    /// A JSON Pointer taken in every element of the array `$output` names, giving the array of
    /// the results, e.g. `/name`.
    #[serde(rename = "$each", default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = POINTER_PATTERN))]
    pub each: Option<String>,
}

/// A field's own value, or a typed reference filled in before the attempt starts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Passed<T> {
    /// Tried first: serde would read a struct from an array, so an array must never reach
    /// `Output`.
    Value(T),
    Output(OutputRef),
}

impl<T: Default> Default for Passed<T> {
    fn default() -> Self {
        Passed::Value(T::default())
    }
}

impl<T> Passed<T> {
    /// The value; a reference still standing is an error (the runner fills references in
    /// before an attempt, so this is a bug or a library caller that skipped that step).
    pub fn value(&self, field: &str) -> Result<&T, TaskError> {
        match self {
            Passed::Value(v) => Ok(v),
            Passed::Output(r) => Err(TaskError::permanent(
                ErrorKind::ReferenceUnresolved,
                format!(
                    "{field}: the reference to \"{}\" was not replaced by its value",
                    r.output
                ),
            )),
        }
    }
}

impl<T> Passed<Vec<T>> {
    /// The list; empty while still a reference (agents check [`Passed::value`] first).
    pub fn items(&self) -> &[T] {
        match self {
            Passed::Value(v) => v,
            Passed::Output(_) => &[],
        }
    }

    /// For `skip_serializing_if`: an empty list given as such.
    pub fn is_empty_list(&self) -> bool {
        matches!(self, Passed::Value(v) if v.is_empty())
    }
}

/// The schema of a `Passed<Vec<String>>` that must not be an empty list (schemars' `length`
/// does not reach inside `anyOf`).
pub fn non_empty_strings(generator: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "anyOf": [
            {"type": "array", "items": {"type": "string"}, "minItems": 1},
            generator.subschema_for::<OutputRef>()
        ]
    })
}

impl<T: JsonSchema> JsonSchema for Passed<T> {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> Cow<'static, str> {
        format!("Passed_{}", T::schema_name()).into()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "anyOf": [generator.subschema_for::<T>(), generator.subschema_for::<OutputRef>()]
        })
    }
}
