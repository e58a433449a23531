//! svcplane-common: the service catalog shared by svcplane-proxy and svcplane-dns.
//!
//! The pipeline is `source → catalog snapshot → consumer`: [`source`] reads Kubernetes objects
//! (API watch or manifests), [`convert`] validates them into the slim [`model`], [`catalog`] merges
//! them into immutable snapshots, and [`health`] serves health, readiness and metrics.

pub mod catalog;
pub mod config;
pub mod convert;
pub mod cowmap;
pub mod health;
pub mod intern;
pub mod model;
pub mod process;
pub mod source;
