//! svcplane-proxy: a Kubernetes service proxy with kube-proxy's semantics.
//!
//! The pipeline is visible in the modules: the catalog (from `svcplane-common`) →
//! [`endpoints`] (which endpoints each frontend may use: readiness, terminating fallback,
//! traffic policies, topology) → [`desired`] (the ruleset as data, per Service) → [`plan`] (the
//! transaction from what is programmed to what is desired) → [`executor`] (nft) — driven by
//! [`sync`]. [`iptables`] is the same pipeline for `--backend iptables`.

pub mod app;
pub mod conntrack;
pub mod desired;
pub mod endpoints;
pub mod executor;
pub mod healthcheck;
pub mod iptables;
pub mod plan;
pub mod ruleset;
pub mod sync;
