//! Data Export: org-level snapshot exports for a multi-tenant membership platform.
//!
//! Features live in their own folders: `auth`, `orgs`, `exports`, `platform`,
//! `storage`, `db`, `seed`, `views`; `web` assembles the router and `startup` the
//! process.

pub mod auth;
pub mod cli;
pub mod config;
pub mod db;
pub mod error;
pub mod exports;
pub mod jobs;
pub mod orgs;
pub mod platform;
pub mod privacy;
pub mod routes;
pub mod seed;
pub mod startup;
pub mod state;
pub mod storage;
pub mod telemetry;
pub mod views;
pub mod web;
