//! Helpers shared by the integration tests. Each helper lives in its own file.

#![allow(dead_code)]

pub mod workspace;
