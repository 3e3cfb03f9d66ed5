//! Who is asking: site accounts and their sessions. (API keys live here
//! too, in their own file.)

pub mod passwords;
pub mod sessions;
pub mod users;
