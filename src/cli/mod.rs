//! What the commands of `mammo-edge` do and print beyond the daemon: `inspect`, `infer`, `demo`,
//! `bench` and the embedded broker of the demo.

pub mod bench;
#[cfg(feature = "embedded-broker")]
pub mod broker;
pub mod demo;
pub mod infer;
pub mod inspect;
