//! Who is asking: partner API keys ([`api_keys`]), site accounts
//! ([`users`], [`passwords`]) and their sessions ([`sessions`]).

pub mod api_keys;
pub mod passwords;
pub mod sessions;
pub mod users;
