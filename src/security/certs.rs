//! Certificates for a cluster: a CA and a cluster certificate for the cluster name, made with
//! rcgen. `shoal certs` writes them; `shoal up` makes dev ones when none exist.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CertError {
    #[error("certificate generation: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not a usable CA ({what}): {source}")]
    Ca {
        path: String,
        what: &'static str,
        source: rcgen::Error,
    },
    #[error("{0} exists already; not overwritten")]
    Exists(String),
    #[error("{0}")]
    Name(String),
}

/// PEM text of a CA and a cluster certificate signed by it.
pub struct ClusterCerts {
    pub ca_pem: String,
    pub ca_key_pem: String,
    /// Cluster certificate followed by the CA certificate.
    pub chain_pem: String,
    pub key_pem: String,
}

/// How long a CA made here is valid.
pub const CA_VALIDITY: std::time::Duration = std::time::Duration::from_secs(10 * 365 * 86_400);
/// How long a cluster or shard certificate made here is valid (reissue with `shoal certs`).
pub const CERT_VALIDITY: std::time::Duration = std::time::Duration::from_secs(397 * 86_400);

/// A cluster name certificates can carry and clients can ask for: a DNS name (not an IP
/// address), the rule `shoal up` applies to `cluster`.
pub fn check_cluster_name(name: &str) -> Result<(), String> {
    match rustls::pki_types::ServerName::try_from(name.to_string()) {
        Ok(rustls::pki_types::ServerName::DnsName(_)) => Ok(()),
        _ => Err(format!(
            "cluster name {name:?} must be a DNS name (letters, digits, '-' and '.'), e.g. shoal.local"
        )),
    }
}

/// Valid from an hour ago (clocks differ) for `validity`.
fn validity(p: &mut CertificateParams, validity: std::time::Duration) {
    let now = time::OffsetDateTime::now_utc();
    p.not_before = now - time::Duration::hours(1);
    p.not_after = now + validity;
}

/// Makes a fresh CA and a certificate for `cluster` (plus `localhost`) signed by it.
pub fn generate(cluster: &str) -> Result<ClusterCerts, CertError> {
    check_cluster_name(cluster).map_err(CertError::Name)?;
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    validity(&mut ca, CA_VALIDITY);
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, format!("shoal CA for {cluster}"));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key)?;

    let key = KeyPair::generate()?;
    let mut leaf = CertificateParams::new(vec![cluster.to_string(), "localhost".to_string()])?;
    validity(&mut leaf, CERT_VALIDITY);
    leaf.distinguished_name.push(DnType::CommonName, cluster);
    let leaf_cert = leaf.signed_by(&key, &ca_cert, &ca_key)?;
    Ok(ClusterCerts {
        ca_pem: ca_cert.pem(),
        ca_key_pem: ca_key.serialize_pem(),
        chain_pem: format!("{}{}", leaf_cert.pem(), ca_cert.pem()),
        key_pem: key.serialize_pem(),
    })
}

/// A certificate issued by an existing cluster CA: for a shard (or a mirror sender) on
/// another host. It names `cluster` (and `localhost`), so it serves clients as the cluster,
/// and carries no extended key usage, so it also authenticates as a client on the control link.
pub struct IssuedCert {
    /// The certificate followed by the CA certificate.
    pub chain_pem: String,
    pub key_pem: String,
}

/// Issues a certificate for `name` from the CA in `ca_dir` (`ca.pem`, `ca.key`).
pub fn issue(ca_dir: &Path, name: &str, cluster: &str) -> Result<IssuedCert, CertError> {
    check_cluster_name(cluster).map_err(CertError::Name)?;
    let read = |file: &str| {
        let path = ca_dir.join(file);
        std::fs::read_to_string(&path).map_err(|source| CertError::Read {
            path: path.display().to_string(),
            source,
        })
    };
    let (ca_pem, ca_key_pem) = (read("ca.pem")?, read("ca.key")?);
    let bad = |what, source| CertError::Ca {
        path: ca_dir.display().to_string(),
        what,
        source,
    };
    let ca_key = KeyPair::from_pem(&ca_key_pem).map_err(|e| bad("ca.key", e))?;
    let ca_params = CertificateParams::from_ca_cert_pem(&ca_pem).map_err(|e| bad("ca.pem", e))?;
    // The issuer as rcgen needs it: the CA's own name and key (its signature is the original's).
    let issuer = ca_params
        .self_signed(&ca_key)
        .map_err(|e| bad("ca.pem with ca.key", e))?;
    let key = KeyPair::generate()?;
    let mut leaf = CertificateParams::new(vec![cluster.to_string(), "localhost".to_string()])?;
    validity(&mut leaf, CERT_VALIDITY);
    leaf.distinguished_name.push(DnType::CommonName, name);
    let cert = leaf.signed_by(&key, &issuer, &ca_key)?;
    Ok(IssuedCert {
        chain_pem: format!("{}{}", cert.pem(), ca_pem),
        key_pem: key.serialize_pem(),
    })
}

/// Writes `<name>.pem` and `<name>.key` (owner-only) into `dir`, refusing to overwrite.
pub fn write_issued(dir: &Path, name: &str, c: &IssuedCert) -> Result<Vec<PathBuf>, CertError> {
    let err = |p: &Path| {
        let path = p.display().to_string();
        move |source| CertError::Write { path, source }
    };
    std::fs::create_dir_all(dir).map_err(err(dir))?;
    let mut out = Vec::new();
    for (file, text, private) in [
        (format!("{name}.pem"), &c.chain_pem, false),
        (format!("{name}.key"), &c.key_pem, true),
    ] {
        let p = dir.join(file);
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        if private {
            std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        }
        #[cfg(not(unix))]
        let _ = private;
        let mut f = opts.open(&p).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                CertError::Exists(p.display().to_string())
            } else {
                CertError::Write {
                    path: p.display().to_string(),
                    source: e,
                }
            }
        })?;
        std::io::Write::write_all(&mut f, text.as_bytes()).map_err(err(&p))?;
        out.push(p);
    }
    Ok(out)
}

/// Writes `ca.pem`, `ca.key`, `cluster.pem` and `cluster.key` into `dir`; returns their paths.
pub fn write(dir: &Path, certs: &ClusterCerts) -> Result<Vec<PathBuf>, CertError> {
    let err = |p: &Path| {
        let path = p.display().to_string();
        move |source| CertError::Write { path, source }
    };
    std::fs::create_dir_all(dir).map_err(err(dir))?;
    let files = [
        ("ca.pem", &certs.ca_pem, false),
        ("ca.key", &certs.ca_key_pem, true),
        ("cluster.pem", &certs.chain_pem, false),
        ("cluster.key", &certs.key_pem, true),
    ];
    let mut out = Vec::new();
    for (name, text, private) in files {
        let p = dir.join(name);
        std::fs::write(&p, text).map_err(err(&p))?;
        #[cfg(unix)]
        if private {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600))
                .map_err(err(&p))?;
        }
        #[cfg(not(unix))]
        let _ = private;
        out.push(p);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_issued_certificate_chains_to_the_cluster_ca() {
        let dir = tempfile::tempdir().unwrap();
        let ca = generate("shoal.test").unwrap();
        write(dir.path(), &ca).unwrap();
        let issued = issue(dir.path(), "shard-7", "shoal.test").unwrap();
        let out = write_issued(dir.path(), "shard-7", &issued).unwrap();
        assert_eq!(out.len(), 2);
        assert!(matches!(
            write_issued(dir.path(), "shard-7", &issued),
            Err(CertError::Exists(_))
        ));
        // A client trusting the CA accepts it as the cluster's server certificate.
        let roots = crate::cluster::pem_certs(&ca.ca_pem);
        let mut store = rustls::RootCertStore::empty();
        for r in roots {
            store.add(r).unwrap();
        }
        let chain = crate::cluster::pem_certs(&issued.chain_pem);
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            std::sync::Arc::new(store),
            std::sync::Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .unwrap();
        let name = rustls::pki_types::ServerName::try_from("shoal.test").unwrap();
        rustls::client::danger::ServerCertVerifier::verify_server_cert(
            &*verifier,
            &chain[0],
            &chain[1..],
            &name,
            &[],
            rustls::pki_types::UnixTime::now(),
        )
        .expect("the issued certificate verifies against the CA");
        // No CA there: a clear error.
        let empty = tempfile::tempdir().unwrap();
        assert!(matches!(
            issue(empty.path(), "x", "shoal.test"),
            Err(CertError::Read { .. })
        ));
    }
}
