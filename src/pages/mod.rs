//! Pages that belong to no feature: the start page, sign-in, Settings -> Modules,
//! and a person's own API tokens and mail settings. Each feature's own pages live in its folder.

pub mod home;
pub mod login;
pub mod modules;
pub mod notifications;
pub mod tokens;
