//! The HTTP gateway, its OpenAPI document and the explorer page in headless Chromium.

mod explorer;
mod http;
mod statuses;
