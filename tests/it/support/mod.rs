//! Test tools shared by several files: a forwarder, a fault-injecting relay, a leak probe, a
//! backend peak sampler, the pgferry binary as a child process and a raw wire-protocol client.

pub mod forward;
pub mod leaks;
pub mod peak;
pub mod process;
pub mod raw;
pub mod relay;
