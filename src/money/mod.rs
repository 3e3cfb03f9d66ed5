//! Money operations after the credit: taking a wrong credit back
//! ([`reverse`]), the monthly statement per partner ([`statement`]),
//! verification of the ledger against balances, file and
//! reversal records ([`verify`]), and the ledger digest it checks
//! ([`digest`]); online backup and restore ([`backup`]).

pub mod backup;
pub mod digest;
pub mod reverse;
pub mod statement;
pub mod verify;
