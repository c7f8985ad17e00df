//! Security material under `--data-dir`: a CA, the serving certificate, an admin client
//! certificate and bearer token, and the admin kubeconfig. Generated on first start and
//! reused later (the serving certificate is re-issued when its names change).
//!
//! Must not: weaken verification; clients verify the server against the CA in the kubeconfig.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use base64::Engine;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

/// A certificate time `secs` after the Unix epoch (rcgen's time type, without naming it).
macro_rules! time_from {
    ($secs:expr) => {
        rcgen::date_time_ymd(1970, 1, 1) + std::time::Duration::from_secs(($secs).max(0) as u64)
    };
}

fn write_private(path: &Path, data: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(data.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

fn read(path: &Path) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .filter(|s| !s.trim().is_empty())
}

/// Loads or creates the material in `dir/pki` for a server reachable under `sans`.
pub fn ensure(dir: &Path, sans: &[String]) -> Result<Pki> {
    let pki = dir.join("pki");
    std::fs::create_dir_all(&pki).with_context(|| format!("creating {}", pki.display()))?;
    let (ca_cert_p, ca_key_p) = (pki.join("ca.crt"), pki.join("ca.key"));
    let (ca_pem, ca_key) = match (read(&ca_cert_p), read(&ca_key_p)) {
        (Some(c), Some(k)) => (c, KeyPair::from_pem(&k).context("parsing ca.key")?),
        _ => {
            let key = KeyPair::generate()?;
            let cert = ca_params().self_signed(&key)?;
            write_private(&ca_key_p, &key.serialize_pem())?;
            write_private(&ca_cert_p, &cert.pem())?;
            (cert.pem(), key)
        }
    };
    let issuer = Issuer::new(ca_params(), ca_key);

    let sans_file = pki.join("apiserver.sans");
    let want_sans = sans.join(",");
    let (srv_c, srv_k) = (pki.join("apiserver.crt"), pki.join("apiserver.key"));
    let (serving_cert_pem, serving_key_pem) = match (read(&srv_c), read(&srv_k), read(&sans_file)) {
        (Some(c), Some(k), Some(s)) if s.trim() == want_sans => (c, k),
        _ => {
            let key = KeyPair::generate()?;
            let mut p = CertificateParams::default();
            let mut dn = DistinguishedName::new();
            dn.push(DnType::CommonName, "kube-apiserver");
            p.distinguished_name = dn;
            p.subject_alt_names = sans
                .iter()
                .map(|s| match s.parse::<std::net::IpAddr>() {
                    Ok(ip) => Ok(SanType::IpAddress(ip)),
                    Err(_) => s.clone().try_into().map(SanType::DnsName),
                })
                .collect::<Result<_, _>>()?;
            p.key_usages = vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyEncipherment,
            ];
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            let now = jiff::Timestamp::now().as_second();
            p.not_before = time_from!(now - 3600);
            p.not_after = time_from!(now + 5 * 365 * 86400);
            let cert = p.signed_by(&key, &issuer)?;
            write_private(&srv_k, &key.serialize_pem())?;
            write_private(&srv_c, &cert.pem())?;
            write_private(&sans_file, &want_sans)?;
            (cert.pem(), key.serialize_pem())
        }
    };

    let (adm_c, adm_k) = (pki.join("admin.crt"), pki.join("admin.key"));
    let (admin_cert_pem, admin_key_pem) = match (read(&adm_c), read(&adm_k)) {
        (Some(c), Some(k)) => (c, k),
        _ => {
            let key = KeyPair::generate()?;
            let mut p = CertificateParams::default();
            let mut dn = DistinguishedName::new();
            dn.push(DnType::CommonName, "kubernetes-admin");
            dn.push(DnType::OrganizationName, "system:masters");
            p.distinguished_name = dn;
            p.key_usages = vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyEncipherment,
            ];
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            let now = jiff::Timestamp::now().as_second();
            p.not_before = time_from!(now - 3600);
            p.not_after = time_from!(now + 5 * 365 * 86400);
            let cert = p.signed_by(&key, &issuer)?;
            write_private(&adm_k, &key.serialize_pem())?;
            write_private(&adm_c, &cert.pem())?;
            (cert.pem(), key.serialize_pem())
        }
    };

    let token_p = dir.join("admin-token");
    let admin_token = match read(&token_p) {
        Some(t) => t.trim().to_string(),
        None => {
            let t = new_token();
            write_private(&token_p, &t)?;
            t
        }
    };
    Ok(Pki {
        ca_pem,
        serving_cert_pem,
        serving_key_pem,
        admin_token,
        admin_cert_pem,
        admin_key_pem,
    })
}

impl Pki {
    /// The rustls server config: our serving cert, optional client certs signed by our CA,
    /// ALPN h2 and http/1.1.
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(self.serving_cert_pem.as_bytes())
                .collect::<Result<_, _>>()?;
        let key = PrivateKeyDer::from_pem_slice(self.serving_key_pem.as_bytes())?;
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(self.ca_pem.as_bytes()) {
            roots.add(c?)?;
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .allow_unauthenticated()
        .build()?;
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs, key)?;
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(cfg))
    }

    /// The admin kubeconfig (bearer token) for `server`.
    pub fn kubeconfig(&self, server: &str) -> String {
        self.token_kubeconfig(server, "admin", &self.admin_token)
    }

    /// A kubeconfig that authenticates as `user` with a bearer token.
    pub fn token_kubeconfig(&self, server: &str, user: &str, token: &str) -> String {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: portico\n  cluster:\n    server: {server}\n    certificate-authority-data: {}\ncontexts:\n- name: portico\n  context:\n    cluster: portico\n    user: {user}\n    namespace: default\ncurrent-context: portico\nusers:\n- name: {user}\n  user:\n    token: {token}\n",
            b64(&self.ca_pem),
        )
    }

    /// A kubeconfig that authenticates with the admin client certificate instead of a token.
    pub fn cert_kubeconfig(&self, server: &str) -> String {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: portico\n  cluster:\n    server: {server}\n    certificate-authority-data: {}\ncontexts:\n- name: portico\n  context:\n    cluster: portico\n    user: admin-cert\n    namespace: default\ncurrent-context: portico\nusers:\n- name: admin-cert\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\n",
            b64(&self.ca_pem),
            b64(&self.admin_cert_pem),
            b64(&self.admin_key_pem)
        )
    }
}

/// Everything the server and its clients need.
pub struct Pki {
    pub ca_pem: String,
    pub serving_cert_pem: String,
    pub serving_key_pem: String,
    pub admin_token: String,
    pub admin_cert_pem: String,
    pub admin_key_pem: String,
}

fn ca_params() -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "portico-ca");
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = jiff::Timestamp::now().as_second();
    p.not_before = time_from!(now - 3600);
    p.not_after = time_from!(now + 10 * 365 * 86400);
    p
}

fn new_token() -> String {
    use rand::Rng;
    let bytes: [u8; 32] = rand::rng().random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The least-privileged identities of the node agents, each with its own token.
pub const COMPONENT_USERS: [(&str, &str); 2] = [
    ("kube-proxy", crate::authz::KUBE_PROXY),
    ("dns", crate::authz::DNS),
];

/// Loads or creates `dir/component-tokens.csv` (in `--token-auth-file` format): one token per
/// entry of [`COMPONENT_USERS`], so `portico proxy` and `portico dns` need no admin rights.
pub fn ensure_component_tokens(dir: &Path) -> Result<Vec<(String, crate::authz::User)>> {
    let path = dir.join("component-tokens.csv");
    let existing = read(&path);
    let mut known = match &existing {
        Some(text) => crate::authz::parse_token_file(text).map_err(|e| {
            anyhow::anyhow!("{}: {e} (delete the file to regenerate it)", path.display())
        })?,
        None => Default::default(),
    };
    let mut lines = String::new();
    let mut out = Vec::new();
    for (_, user) in COMPONENT_USERS {
        let token = known
            .iter()
            .find(|(_, u)| u.name == user)
            .map(|(t, _)| t.clone())
            .unwrap_or_else(new_token);
        let u = known
            .remove(&token)
            .unwrap_or_else(|| crate::authz::User::new(user, &[]));
        lines.push_str(&format!("{token},{user},{user}\n"));
        out.push((token, u));
    }
    if existing.as_deref() != Some(lines.as_str()) {
        write_private(&path, &lines)?;
    }
    Ok(out)
}

/// Writes `path` atomically with owner-only permissions.
pub fn write_kubeconfig(path: &Path, text: &str) -> Result<PathBuf> {
    write_private(path, text)?;
    Ok(path.to_path_buf())
}
