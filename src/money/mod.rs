//! Money operations after the credit: verification of the ledger against
//! balances and file records ([`verify`]), and the per-file ledger digest
//! it checks ([`digest`]).

pub mod digest;
pub mod verify;
