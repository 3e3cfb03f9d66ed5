//! Who is calling: partner API keys ([`api_keys`]). Site logins and
//! sessions live beside it.

pub mod api_keys;
