//! Restore: a version-1 org snapshot loaded back into a new org, all or nothing.
//!
//! [`engine`] streams the file (gzip, JSON, each section's rows) into staging tables
//! inside one transaction, checks it, maps every id and person, writes the new org
//! and its rows, copies the documents' binaries when the source is a completed
//! export of this platform, and commits only when everything held. The rest is the
//! platform admin's surface: the `org_imports` records ([`records`]), the job on
//! queue `imports` ([`job`]), the page `/platform/imports` ([`web`], [`views`]) and
//! the JSON API ([`api`]). See docs/restore.md.

pub mod api;
pub mod engine;
pub mod fast;
pub mod job;
pub mod members;
pub mod records;
pub mod steps;
pub mod views;
pub mod web;

pub use engine::{Expected, ImportError, Matched, Report, Request, import};
pub use fast::WritePath;
