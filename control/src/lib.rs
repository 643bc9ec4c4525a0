#![forbid(unsafe_code)]

pub mod analysis;
mod dashboard;
pub mod engine;
pub mod healing;
pub mod hooks;
pub mod ingest;
pub mod map;
pub mod rollout;
mod run;
pub mod server;
pub mod service;
mod sse;
pub mod store;

pub use run::{run, RunError};
