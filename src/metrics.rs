//! Metrics on logits.
