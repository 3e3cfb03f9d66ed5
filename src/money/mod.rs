//! Money operations after the credit: taking a wrong credit back
//! ([`reverse`]), crediting a refused or reversed file again from its
//! archived bytes ([`retry`]), the monthly statement per partner ([`statement`]),
//! verification of the ledger against balances, file and
//! reversal records ([`verify`]), and the ledger digest it checks
//! ([`digest`]); online backup and restore ([`backup`]).

pub mod backup;
pub mod digest;
pub mod retry;
pub mod reverse;
pub mod statement;
pub mod verify;
