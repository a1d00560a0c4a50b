//! Shared helpers of the integration test binaries (each uses only some of them).
#![allow(dead_code)]

pub mod chaos;
pub mod cluster;
pub mod db;
pub mod participant;
pub mod process;
