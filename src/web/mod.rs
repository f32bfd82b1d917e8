//! Web helpers every feature's handlers share, below the features: form fields
//! ([`forms`]), answers ([`respond`]: redirects that must not be cached, the
//! htmx-or-redirect answer after a POST), ids parsed from the path ([`path`]) and
//! keyset paging from the query ([`paging`]), and how sizes read ([`format`]).
//! The router that assembles every feature's routes is `crate::router`.

pub mod format;
pub mod forms;
pub mod paging;
pub mod path;
pub mod respond;
