#![forbid(unsafe_code)]

pub mod hooks;
pub mod ingest;
pub mod map;
mod run;
pub mod server;
pub mod service;
mod sse;
pub mod store;

pub use run::{run, RunError};
