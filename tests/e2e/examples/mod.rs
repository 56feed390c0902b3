//! The examples, run as a user runs them.

mod gateway_example;
mod observability_examples;
mod streaming_example;
mod user_service_example;
