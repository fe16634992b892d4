//! The kubectl-like client subcommands (being written).
use clap::Args;
#[derive(Args, Debug)]
pub struct GetArgs {}
#[derive(Args, Debug)]
pub struct ApplyArgs {}
#[derive(Args, Debug)]
pub struct DeleteArgs {}
pub async fn get(_a: GetArgs) -> anyhow::Result<()> {
    anyhow::bail!("not yet")
}
pub async fn apply(_a: ApplyArgs) -> anyhow::Result<()> {
    anyhow::bail!("not yet")
}
pub async fn delete(_a: DeleteArgs) -> anyhow::Result<()> {
    anyhow::bail!("not yet")
}
