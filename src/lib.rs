//! Data Export: org-level snapshot exports for a multi-tenant membership platform.
//!
//! The layers, from the top down (docs/architecture.md has the map; a test keeps it
//! true): a module uses only the layers below its own.
//!
//! 1. `cli`: the command line.
//! 2. `startup`: the process: services, listeners, workers, housekeeping.
//! 3. `router`, `board`: the HTTP listeners: the route table, the job board.
//! 4. `workers`: the queue registry.
//! 5. `platform`: the platform admin's feature (settings page, scheduler, pruner).
//! 6. `exports`, `privacy`, `pages`, `seed`: features.
//! 7. `views`, `web`: page layout; web helpers every handler shares.
//! 8. `auth`: who is asking.
//! 9. `mail`, `settings`: mail to people; the platform's stored settings.
//! 10. `orgs`: organizations, modules, the org's tables.
//! 11. `audit`: the audit log writer.
//! 12. `snapshot`: the snapshot engine.
//! 13. `jobs`: job plumbing.
//! 14. `state`: the shared state.
//! 15. `db`, `storage`: PostgreSQL and object storage.
//! 16. `error`: the application error.
//! 17. `config`, `routes`, `telemetry`: configuration, paths, logging.

pub mod audit;
pub mod auth;
pub mod board;
pub mod cli;
pub mod config;
pub mod db;
pub mod error;
pub mod exports;
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
pub mod telemetry;
pub mod views;
pub mod web;
pub mod workers;
