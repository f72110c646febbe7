//! The crate's integration tests, one binary (one link) for all of them.
#![allow(clippy::unwrap_used, missing_docs)]

mod config;
mod detector;
mod hooks;
mod incidents;
mod model;
mod scoring;
mod store;
