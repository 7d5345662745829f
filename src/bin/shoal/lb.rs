//! `shoal lb`: balancer configurations for a cluster behind one virtual address.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};

use shoal::cluster::config::Config;
use shoal::lb::rules::{self, Backends};

#[derive(Args)]
pub struct LbArgs {
    #[command(subcommand)]
    cmd: LbCmd,
}

#[derive(Subcommand)]
enum LbCmd {
    /// Print an nftables ruleset that routes by the server id in QUIC-LB connection IDs
    /// (stateless; needs lb.profile = "plaintext" or "nlb").
    Nftables {
        /// The cluster's config (its [lb] section); defaults otherwise, with lb.profile =
        /// "plaintext".
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The virtual address clients reach hub and shards on.
        #[arg(long)]
        vip: SocketAddr,
        /// The hub's own address (it also gets every packet no shard's server id matches).
        #[arg(long)]
        hub: SocketAddr,
        /// A shard: `ID=ADDR` (its shard id and own address); repeat for each.
        #[arg(long = "shard", value_name = "ID=ADDR", value_parser = parse_shard, required = true)]
        shards: Vec<(u32, SocketAddr)>,
    },
    /// Print an nginx `stream` configuration: one UDP listener per backend (the 5-tuple
    /// alternative: shards then advertise their balancer port with `--advertise`).
    Nginx {
        /// `LISTEN=BACKEND`: a balancer address and the hub or shard behind it; repeat.
        #[arg(long = "listen", value_name = "LISTEN=BACKEND", value_parser = parse_pair, required = true)]
        listeners: Vec<(SocketAddr, SocketAddr)>,
    },
    /// Rotate the running cluster's QUIC-LB configuration to the next config id (and its
    /// key): new CIDs and grants use it at once, existing connections keep theirs.
    Rotate {
        /// Address of the admin API of `shoal up`.
        #[arg(long, default_value = "127.0.0.1:4480")]
        admin: SocketAddr,
        #[command(flatten)]
        token: crate::mirror::AdminTokenArg,
    },
}

fn parse_shard(s: &str) -> Result<(u32, SocketAddr), String> {
    let (id, addr) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected ID=ADDR, e.g. 1=10.0.0.3:4500"))?;
    let id = id
        .parse()
        .map_err(|_| format!("{id:?}: a shard id is a number in 0..=4294967294"))?;
    let addr = addr
        .parse()
        .map_err(|_| format!("{addr:?}: expected ip:port"))?;
    if id == shoal::lb::HUB_SERVER_ID {
        return Err(format!("{id} is the hub's server id"));
    }
    Ok((id, addr))
}

fn parse_pair(s: &str) -> Result<(SocketAddr, SocketAddr), String> {
    let (l, b) = s.split_once('=').ok_or_else(|| {
        format!("{s:?}: expected LISTEN=BACKEND, e.g. 10.0.0.1:443=10.0.0.2:4433")
    })?;
    let p = |a: &str| a.parse().map_err(|_| format!("{a:?}: expected ip:port"));
    Ok((p(l)?, p(b)?))
}

pub async fn run(a: LbArgs) -> Result<()> {
    match a.cmd {
        LbCmd::Nftables {
            config,
            vip,
            hub,
            shards,
        } => {
            let cfg = match &config {
                Some(p) => Config::load(p)?,
                None => {
                    let mut c = Config::default();
                    c.lb.profile = shoal::cluster::config::LbProfile::Plaintext;
                    c
                }
            };
            if cfg.lb.profile == shoal::cluster::config::LbProfile::Encrypted {
                return Err(crate::args::InputError(
                    "lb.profile is \"encrypted\": a kernel ruleset cannot decrypt server ids; set lb.profile = \"plaintext\" or \"nlb\"".into(),
                )
                .into());
            }
            // No key is needed for the plaintext profiles.
            let lb = cfg.lb.config(None).context("the [lb] section")?;
            let b = Backends { vip, hub, shards };
            print!("{}", rules::nftables(&lb, &b)?);
        }
        LbCmd::Nginx { listeners } => print!("{}", rules::nginx(&listeners)?),
        LbCmd::Rotate { admin, token } => {
            let r = shoal::admin::client::request_with_token(
                admin,
                "POST",
                "/lb/rotate",
                None,
                token.read()?.as_ref(),
                std::time::Duration::from_secs(10),
            )
            .await?;
            if !r.is_success() {
                return Err(token.refusal(&r));
            }
            let json = r.json().unwrap_or_default();
            println!(
                "QUIC-LB config id {} -> {} ({} shards told)",
                json["from"], json["to"], json["shards"]
            );
        }
    }
    Ok(())
}
