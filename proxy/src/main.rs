//! svcplane-proxy: see [`svcplane_proxy::app::main`].

fn main() -> anyhow::Result<()> {
    svcplane_proxy::app::main()
}
