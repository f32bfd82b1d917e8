//! Integration tests: one binary, real PostgreSQL, the embedded S3 endpoint.

mod helpers;

mod access;
mod auth;
mod board;
mod browser;
mod closing;
mod configuration;
mod coverage;
mod exports;
mod faults;
mod hardening;
mod health;
mod history;
mod imports;
mod inputs;
mod layers;
mod mail;
mod modules;
mod openapi;
mod platform;
mod privacy;
mod restore;
mod seed;
mod sessions;
mod soak;
mod tables;
mod tokens;
mod webhooks;
mod zero_config;
