//! `shoal certs`: generate a CA and a cluster certificate.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

#[derive(Args)]
pub struct CertsArgs {
    /// Where the files go.
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value = shoal::DEFAULT_CLUSTER)]
    cluster: String,
    /// Instead of a new CA: issue a certificate named NAME (`NAME.pem`, `NAME.key`) from the
    /// CA in `--ca-dir`, for a shard on another host (it serves clients as the cluster and
    /// authenticates on the control link).
    #[arg(long, value_name = "NAME", requires = "ca_dir")]
    issue: Option<String>,
    /// Directory with the cluster CA (`ca.pem`, `ca.key`), for --issue.
    #[arg(long, value_name = "DIR")]
    ca_dir: Option<PathBuf>,
    /// Replace a CA and cluster certificate already in `--out` (certificates the old CA
    /// issued are no longer trusted by clients of the new one).
    #[arg(long)]
    force: bool,
}

pub fn run(a: CertsArgs) -> Result<()> {
    let written = match (&a.issue, &a.ca_dir) {
        (Some(name), Some(ca_dir)) => {
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
                refuse!("--issue NAME must be letters, digits and '-'");
            }
            if let Err(e) = shoal::security::certs::check_cluster_name(&a.cluster) {
                refuse!("--cluster: {e}");
            }
            let c = shoal::security::certs::issue(ca_dir, name, &a.cluster)?;
            shoal::security::certs::write_issued(&a.out, name, &c)?
        }
        _ => {
            if let Err(e) = shoal::security::certs::check_cluster_name(&a.cluster) {
                refuse!("--cluster: {e}");
            }
            if !a.force {
                for f in ["ca.pem", "ca.key", "cluster.pem", "cluster.key"] {
                    let p = a.out.join(f);
                    if p.exists() {
                        refuse!(
                            "{} exists: pass --force to replace the CA (clients trusting the old one will refuse the new certificates)",
                            p.display()
                        );
                    }
                }
            }
            let c = shoal::security::certs::generate(&a.cluster)?;
            shoal::security::certs::write(&a.out, &c)?
        }
    };
    for p in written {
        println!("wrote {}", p.display());
    }
    Ok(())
}
