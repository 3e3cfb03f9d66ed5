//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod browser;
pub mod gpg;
pub mod pg;
pub mod serve;
pub mod servers;
pub mod workspace;
