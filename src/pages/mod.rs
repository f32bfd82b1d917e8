//! Pages that belong to no feature: the start page, sign-in, and Settings ->
//! Modules. Each feature's own pages live in its folder.

pub mod home;
pub mod login;
pub mod modules;
