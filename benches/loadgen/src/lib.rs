//! Shared pieces of the benchmark tools: the latency histogram and /proc readers.

pub mod hist;
pub mod procfs;
