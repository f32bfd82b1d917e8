//! The platform-level settings: the backup configuration and its verification.

pub mod backup;
