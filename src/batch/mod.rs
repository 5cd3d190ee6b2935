//! The batch: its model, its JSON Schema, output references between tasks, and validation.

#[cfg(test)]
mod coverage;
pub mod exercise;
mod fast;
pub mod integral;
pub mod model;
mod scan;
pub mod schema;
pub mod template;
pub mod typing;
pub mod validate;

// Shared with the agents, which must not depend on the batch: kept at their old paths too.
pub use crate::{issue, limits, passed};

pub use issue::Issue;
pub use limits::Limits;
pub use model::*;
pub use validate::{
    ValidatedBatch, ValidationContext, validate_text, validate_text_with, validate_value,
    validate_value_with,
};
