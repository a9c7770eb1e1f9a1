//! The commands of the `airlock` binary that are more than a call into the library.

pub mod audit;
pub mod policy;
pub mod sandbox;
pub mod serve;
