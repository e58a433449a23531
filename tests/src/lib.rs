//! svcplane's test harness: the Kubernetes API test server ([`apiserver`]), the network-namespace
//! harness ([`netns`]), synthetic catalogs for benchmarks ([`gen`](crate::r#gen)) and svcplane-lab
//! ([`lab`]), a whole cluster's data plane in network namespaces.

pub mod apiserver;
pub mod r#gen;
pub mod lab;
pub mod netns;
