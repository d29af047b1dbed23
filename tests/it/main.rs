//! The one integration-test binary (one link, shared fixtures). Each module is a concern.

mod cli;
#[cfg(feature = "s3")]
mod cold_garage;
mod common;
mod compat;
mod core;
mod crash;
mod damage;
mod faults;
mod gc;
mod hostile;
mod http;
#[cfg(feature = "media")]
mod images;
mod lifecycle;
mod pipeline;
mod quota;
mod recover;
mod reports;
mod rescan;
mod scan;
mod tier;
#[cfg(feature = "s3")]
mod tier_conformance;
mod tus;
mod upload;
mod validation;
