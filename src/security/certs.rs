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
}

/// PEM text of a CA and a cluster certificate signed by it.
pub struct ClusterCerts {
    pub ca_pem: String,
    pub ca_key_pem: String,
    /// Cluster certificate followed by the CA certificate.
    pub chain_pem: String,
    pub key_pem: String,
}

/// Makes a fresh CA and a certificate for `cluster` (plus `localhost`) signed by it.
pub fn generate(cluster: &str) -> Result<ClusterCerts, CertError> {
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, format!("shoal CA for {cluster}"));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key)?;

    let key = KeyPair::generate()?;
    let mut leaf = CertificateParams::new(vec![cluster.to_string(), "localhost".to_string()])?;
    leaf.distinguished_name.push(DnType::CommonName, cluster);
    let leaf_cert = leaf.signed_by(&key, &ca_cert, &ca_key)?;
    Ok(ClusterCerts {
        ca_pem: ca_cert.pem(),
        ca_key_pem: ca_key.serialize_pem(),
        chain_pem: format!("{}{}", leaf_cert.pem(), ca_cert.pem()),
        key_pem: key.serialize_pem(),
    })
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
