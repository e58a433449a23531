//! svcplane-proxy: a Kubernetes service proxy with kube-proxy's semantics.
//!
//! The pipeline is visible in the modules: the catalog (from `svcplane-common`) →
//! [`endpoints`] (which endpoints each frontend may use: readiness, terminating fallback,
//! traffic policies, topology) → the desired ruleset (pure data) → the executor that brings the
//! kernel to it.

pub mod endpoints;
pub mod healthcheck;
