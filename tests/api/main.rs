//! Integration tests: one binary, real PostgreSQL, the embedded S3 endpoint.

mod helpers;

mod auth;
mod browser;
mod coverage;
mod exports;
mod modules;
mod platform;
mod privacy;
mod seed;
mod zero_config;
