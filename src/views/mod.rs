//! Page furniture shared by every feature: the layout, navigation by role, flashes.

pub mod layout;

pub use layout::{PageCtx, page};
