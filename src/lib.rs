//! Data Export: org-level snapshot exports for a multi-tenant membership platform.
//!
//! Its modules sit in layers, and a module uses only the layers below its own:
//! docs/architecture.md has the map, and the test `layers` keeps it true.

pub mod audit;
pub mod auth;
pub mod board;
pub mod cli;
pub mod closing;
pub mod config;
pub mod db;
pub mod error;
pub mod exports;
pub mod health;
pub mod imports;
pub mod jobs;
pub mod mail;
pub mod orgs;
pub mod pages;
pub mod platform;
pub mod privacy;
pub mod router;
pub mod routes;
pub mod seed;
pub mod settings;
pub mod snapshot;
pub mod startup;
pub mod state;
pub mod storage;
pub mod tables;
pub mod telemetry;
pub mod views;
pub mod web;
pub mod webhooks;
pub mod workers;
