//! `shoal certs`: generate a CA and a cluster certificate.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

#[derive(Args)]
pub struct CertsArgs {
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value = shoal::DEFAULT_CLUSTER)]
    cluster: String,
}

pub fn run(a: CertsArgs) -> Result<()> {
    let c = shoal::security::certs::generate(&a.cluster)?;
    for p in shoal::security::certs::write(&a.out, &c)? {
        println!("wrote {}", p.display());
    }
    Ok(())
}
