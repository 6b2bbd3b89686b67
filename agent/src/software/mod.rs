//! The parts of the software lifecycle (seeds 002 to 004): what may be
//! installed ([`settings`]), the job a journal entry carries ([`job`]),
//! the verified, resumable download ([`download`]), the durable file
//! moves of an install ([`fs`]) and the record of what is installed
//! ([`installed`]). `runner::software` puts them together.

pub mod download;
pub mod fs;
pub mod installed;
pub mod job;
pub mod settings;

pub use settings::Settings;
