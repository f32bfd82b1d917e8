//! The platform level: the backup configuration and its verification, retention
//! and the pruner, the schedule presets and the scheduler, the settings page, and
//! the job board.

pub mod backup;
pub mod board;
pub mod pruner;
pub mod retention;
pub mod schedule;
pub mod scheduler;
pub mod settings;
pub mod web;
