//! Who is asking: partner API keys ([`api_keys`], with the cache of
//! [`key_cache`]), site accounts
//! ([`users`], [`passwords`]) and their sessions ([`sessions`]).

pub mod api_keys;
pub mod key_cache;
pub mod passwords;
pub mod sessions;
pub mod users;
