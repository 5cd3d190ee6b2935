//! The batch: its model, its JSON Schema, output references between tasks, and validation.

pub mod issue;
pub mod model;
pub mod schema;
pub mod template;
pub mod validate;

pub use issue::Issue;
pub use model::*;
pub use validate::{
    ValidatedBatch, ValidationContext, validate_text, validate_text_with, validate_value,
    validate_value_with,
};
