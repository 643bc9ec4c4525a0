#![forbid(unsafe_code)]

pub mod ingest;
pub mod map;
pub mod store;
