//! The snapshot engine, beneath every feature that writes or reads a snapshot file:
//! one consistent read of PostgreSQL ([`pipeline::Reader`]) streamed through binary
//! COPY decoding ([`copy_binary`]), row-JSON rendering ([`row_json`]) and gzip into a
//! sink ([`sink`]: a multipart upload through `Storage`, or a local file), and the
//! streaming check of a finished file ([`verify`]). [`job`] is the skeleton of a job
//! that writes one snapshot to one object. [`columns`] applies the caller's
//! classification of every column: nothing is written that it does not classify.
//! [`timeline`] keeps the time each stage of the pipeline was busy or waiting.
//!
//! It knows nothing of export runs, privacy requests, pages or orgs' settings: what
//! to read and what the header says come from the caller.

pub mod columns;
pub mod copy_binary;
pub mod described;
pub mod job;
pub mod pipeline;
pub mod row_json;
pub mod sink;
pub mod timeline;
pub mod verify;

pub use pipeline::{Header, Outcome, Reader, SectionQuery, Snapshot};
