//! Development certificates, made in-process (`ordo dev-certs`, the secure quick start, and
//! tests): a cluster CA and node certificates signed by it, as PEM files. Keys are written
//! readable by their owner only. For production, use your own PKI; ordo only needs the three
//! files of `TlsFiles` per node.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    RevocationReason, RevokedCertParams, SerialNumber,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use time::OffsetDateTime;

use super::TlsFiles;

#[derive(Debug, thiserror::Error)]
pub enum DevCertError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("making a certificate: {0}")]
    Cert(#[from] rcgen::Error),
    #[error("{0}: not a certificate: {1}")]
    Unreadable(PathBuf, String),
}

/// When a certificate is valid.
#[derive(Debug, Clone, Copy)]
pub struct Validity {
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl Validity {
    /// From an hour ago (clocks differ a little) for `days` days.
    pub fn days(days: u64) -> Validity {
        let now = OffsetDateTime::now_utc();
        Validity {
            not_before: now - Duration::from_secs(3600),
            not_after: now + Duration::from_secs(days * 86_400),
        }
    }

    /// Valid for a week that ended yesterday: for tests of expiry.
    pub fn expired() -> Validity {
        let now = OffsetDateTime::now_utc();
        Validity {
            not_before: now - Duration::from_secs(8 * 86_400),
            not_after: now - Duration::from_secs(86_400),
        }
    }
}

/// A CA whose certificate and key live in `ca.pem` and `ca-key.pem` of a directory.
pub struct DevCa {
    cert_pem: String,
    key_pem: String,
}

fn write(path: &Path, contents: &str, private: bool) -> Result<(), DevCertError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| DevCertError::Io {
        path: path.to_path_buf(),
        source,
    };
    // Written beside and renamed over, so a node reloading mid-write never reads half a file.
    let temp = path.with_extension("pem.tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if private { 0o600 } else { 0o644 })
        .open(&temp)
        .map_err(io)?;
    file.write_all(contents.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)?;
    std::fs::rename(&temp, path).map_err(io)
}

fn read(path: &Path) -> Result<String, DevCertError> {
    std::fs::read_to_string(path).map_err(|source| DevCertError::Io {
        path: path.to_path_buf(),
        source,
    })
}

impl DevCa {
    /// The CA in `dir`, made (valid ten years) if `dir` has none yet.
    pub fn create(dir: &Path) -> Result<DevCa, DevCertError> {
        let (cert_path, key_path) = (dir.join("ca.pem"), dir.join("ca-key.pem"));
        if cert_path.exists() && key_path.exists() {
            return Ok(DevCa {
                cert_pem: read(&cert_path)?,
                key_pem: read(&key_path)?,
            });
        }
        std::fs::create_dir_all(dir).map_err(|source| DevCertError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let ca = DevCa::generate("ordo development CA", Validity::days(3650))?;
        write(&key_path, &ca.key_pem, true)?;
        write(&cert_path, &ca.cert_pem, false)?;
        Ok(ca)
    }

    /// A new CA, in memory (tests write it where they like with `save`).
    pub fn generate(name: &str, validity: Validity) -> Result<DevCa, DevCertError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = validity.not_before;
        params.not_after = validity.not_after;
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(DevCa {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Writes the CA certificate (only) to `path`.
    pub fn save_cert(&self, path: &Path) -> Result<(), DevCertError> {
        write(path, &self.cert_pem, false)
    }

    /// Issues a node certificate for `hosts` (IP addresses or DNS names, as peers and clients
    /// will address the node), valid for both sides of a TLS connection, and writes
    /// `NAME.pem` and `NAME-key.pem` into `dir` (replacing earlier ones).
    pub fn issue_node(
        &self,
        dir: &Path,
        name: &str,
        hosts: &[&str],
        validity: Validity,
    ) -> Result<TlsFiles, DevCertError> {
        let ca_key = KeyPair::from_pem(&self.key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(&self.cert_pem, ca_key)?;
        let mut params =
            CertificateParams::new(hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.not_before = validity.not_before;
        params.not_after = validity.not_after;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &issuer)?;
        let files = TlsFiles {
            cert: dir.join(format!("{name}.pem")),
            key: dir.join(format!("{name}-key.pem")),
            ca: dir.join("ca.pem"),
            crl: None,
        };
        write(&files.key, &key.serialize_pem(), true)?;
        write(&files.cert, &cert.pem(), false)?;
        Ok(files)
    }

    /// Writes to `path` a revocation list of this CA (valid 30 days) that revokes the
    /// certificates in the PEM files `revoked` (none: an empty list).
    pub fn revocation_list(&self, path: &Path, revoked: &[&Path]) -> Result<(), DevCertError> {
        let now = OffsetDateTime::now_utc();
        let mut revoked_certs = Vec::new();
        for file in revoked {
            let pem = read(file)?;
            let der = CertificateDer::from_pem_slice(pem.as_bytes())
                .map_err(|e| DevCertError::Unreadable(file.to_path_buf(), e.to_string()))?;
            let cert = webpki::EndEntityCert::try_from(&der)
                .map_err(|e| DevCertError::Unreadable(file.to_path_buf(), e.to_string()))?;
            revoked_certs.push(RevokedCertParams {
                serial_number: SerialNumber::from_slice(cert.serial()),
                revocation_time: now,
                reason_code: Some(RevocationReason::Superseded),
                invalidity_date: None,
            });
        }
        let params = CertificateRevocationListParams {
            this_update: now - Duration::from_secs(3600),
            next_update: now + Duration::from_secs(30 * 86_400),
            // Seconds since the epoch: a list made later has a higher number.
            crl_number: SerialNumber::from(now.unix_timestamp() as u64),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let ca_key = KeyPair::from_pem(&self.key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(&self.cert_pem, ca_key)?;
        write(path, &params.signed_by(&issuer)?.pem()?, false)
    }
}
