//! The platform admin's feature: the settings page (backup configuration, retention,
//! schedule), the scheduler that fires the schedule's slots, and the retention
//! pruner. It orchestrates the features below it: the scheduler creates org exports,
//! the pruner removes them, and its hourly run also expires data-subject files.

pub mod buckets;
pub mod metrics;
pub mod notices;
pub mod orgs;
pub mod pruner;
pub mod retention;
pub mod scheduler;
pub mod web;
