//! svcplane-dns: cluster DNS for Kubernetes Services.
//!
//! The pipeline is visible in the modules: the catalog (from `svcplane-common`) → [`view`] (the
//! DNS index, updated per changed Service) → [`answer`] (the spec as a pure function) →
//! [`wire`] (allocation-free encoding) → [`server`] (UDP workers, TCP). Names outside the cluster
//! go through [`forward`] with its [`cache`].

pub mod answer;
pub mod app;
pub mod cache;
pub mod forward;
pub mod metrics;
pub mod name;
pub mod server;
pub mod updater;
pub mod view;
pub mod wire;
