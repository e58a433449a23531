//! svcplane-proxy, built as a binary of the tests crate so that integration tests here can start
//! it as a process (`env!("CARGO_BIN_EXE_proxy-under-test")`) inside node namespaces.

fn main() -> anyhow::Result<()> {
    svcplane_proxy::app::main()
}
