//! Helpers for process tests of `postern-gateway`.

#![allow(dead_code)]

#[path = "../../../postern-device/testing/process.rs"]
mod process;

pub use process::*;

pub const BIN: &str = env!("CARGO_BIN_EXE_postern-gateway");
