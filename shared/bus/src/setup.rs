//! Everything a NATS server for Gantry needs, generated into one directory: each role's nkey,
//! the registry's system-account key, the auth callout's issuer key, a CA with a server
//! certificate, and the server configuration that ties them to the permissions of
//! [`crate::permissions`]. Files that exist are kept, so running it again (every `up.sh`) changes
//! nothing but the configuration.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::Context;
use nkeys::KeyPair;
use serde_json::{json, Value};

use crate::permissions::{self, Permissions, Role, ACCOUNT, SYSTEM_ACCOUNT};

/// What to generate.
#[derive(Debug, Clone)]
pub struct Setup {
    /// Where the files go (created when missing).
    pub dir: PathBuf,
    /// The address the server listens on, `host:port`.
    pub listen: String,
    /// JetStream's storage directory.
    pub store_dir: PathBuf,
    /// Names and addresses the server certificate is valid for.
    pub hosts: Vec<String>,
    /// Whether clients must use TLS.
    pub tls: bool,
    /// Also make an `inspector` user with every permission (for tests and break-glass).
    pub inspector: bool,
    /// The server's HTTP monitoring port (`/varz`, `/jsz`), if any.
    pub http_port: Option<u16>,
}

/// Where the generated files are.
#[derive(Debug, Clone)]
pub struct Layout {
    dir: PathBuf,
}

impl Layout {
    /// The layout of an existing directory.
    pub fn at(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A role's nkey seed.
    pub fn role_seed(&self, role: Role) -> PathBuf {
        self.dir.join("keys").join(format!("{}.nk", role.name()))
    }

    /// The registry's system-account nkey seed (to disconnect nodes of revoked tokens).
    pub fn system_seed(&self) -> PathBuf {
        self.dir.join("keys").join("registry-system.nk")
    }

    /// The auth callout's issuer (account) nkey seed, held by the registry.
    pub fn issuer_seed(&self) -> PathBuf {
        self.dir.join("keys").join("callout-issuer.nk")
    }

    /// The inspector's nkey seed (when generated).
    pub fn inspector_seed(&self) -> PathBuf {
        self.dir.join("keys").join("inspector.nk")
    }

    /// The CA certificate clients trust.
    pub fn ca(&self) -> PathBuf {
        self.dir.join("tls").join("ca.pem")
    }

    /// The server's certificate.
    pub fn server_cert(&self) -> PathBuf {
        self.dir.join("tls").join("server.pem")
    }

    /// The server's private key.
    pub fn server_key(&self) -> PathBuf {
        self.dir.join("tls").join("server-key.pem")
    }

    /// The server configuration.
    pub fn config(&self) -> PathBuf {
        self.dir.join("nats-server.conf")
    }
}

fn write_private(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent)?;
        fs::set_permissions(parent, fs::Permissions::from_mode(0o700))?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(contents)?;
    f.sync_all()?;
    fs::rename(&tmp, path)?;
    Ok(())
}

/// The key in `path`, made (with `new`) and written when missing.
fn key(path: &Path, new: fn() -> KeyPair) -> anyhow::Result<KeyPair> {
    if path.exists() {
        return read_seed(path);
    }
    let kp = new();
    let seed = kp.seed().map_err(|e| anyhow::anyhow!("{e}"))?;
    write_private(path, format!("{seed}\n").as_bytes())?;
    Ok(kp)
}

/// Read an nkey seed file.
pub fn read_seed(path: &Path) -> anyhow::Result<KeyPair> {
    let seed = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    KeyPair::from_seed(seed.trim()).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

fn tls(layout: &Layout, hosts: &[String]) -> anyhow::Result<()> {
    if layout.ca().exists() && layout.server_cert().exists() && layout.server_key().exists() {
        return Ok(());
    }
    let ca_key = rcgen::KeyPair::generate()?;
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "Gantry local CA");
    ca.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = rcgen::Issuer::new(ca, ca_key);

    let server_key = rcgen::KeyPair::generate()?;
    let mut server = rcgen::CertificateParams::new(hosts.to_vec())?;
    server
        .distinguished_name
        .push(rcgen::DnType::CommonName, "gantry-nats");
    server.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let server_cert = server.signed_by(&server_key, &issuer)?;

    write_private(&layout.server_key(), server_key.serialize_pem().as_bytes())?;
    write_private(&layout.server_cert(), server_cert.pem().as_bytes())?;
    write_private(&layout.ca(), ca_cert.pem().as_bytes())?;
    // Clients read the CA; it is not a secret.
    fs::set_permissions(layout.ca(), fs::Permissions::from_mode(0o644))?;
    Ok(())
}

fn server_permissions(p: &Permissions) -> Value {
    let mut publish = json!({ "allow": p.publish });
    if !p.publish_deny.is_empty() {
        publish["deny"] = json!(p.publish_deny);
    }
    let mut v = json!({ "publish": publish, "subscribe": { "allow": p.subscribe } });
    if p.responses {
        v["allow_responses"] = json!(true);
    }
    v
}

/// Generate what is missing and (re)write the server configuration.
pub fn write(setup: &Setup) -> anyhow::Result<Layout> {
    let layout = Layout::at(&setup.dir);
    fs::create_dir_all(&setup.dir)?;
    let mut users = Vec::new();
    let mut auth_users = Vec::new();
    for role in Role::ALL {
        let kp = key(&layout.role_seed(role), KeyPair::new_user)?;
        users.push(json!({
            "nkey": kp.public_key(),
            "permissions": server_permissions(&permissions::role(role)),
        }));
        auth_users.push(kp.public_key());
    }
    if setup.inspector {
        let kp = key(&layout.inspector_seed(), KeyPair::new_user)?;
        users.push(json!({ "nkey": kp.public_key() }));
        auth_users.push(kp.public_key());
    }
    let system = key(&layout.system_seed(), KeyPair::new_user)?;
    auth_users.push(system.public_key());
    let issuer = key(&layout.issuer_seed(), KeyPair::new_account)?;

    let mut config = json!({
        "listen": setup.listen,
        "max_payload": 1_048_576,
        "jetstream": { "store_dir": setup.store_dir },
        "system_account": SYSTEM_ACCOUNT,
        "accounts": {
            ACCOUNT: { "jetstream": "enabled", "users": users },
            SYSTEM_ACCOUNT: { "users": [ { "nkey": system.public_key() } ] },
        },
        "authorization": {
            "auth_callout": {
                "issuer": issuer.public_key(),
                "account": ACCOUNT,
                "auth_users": auth_users,
            },
        },
    });
    if let Some(port) = setup.http_port {
        config["http_port"] = json!(port);
    }
    if setup.tls {
        tls(&layout, &setup.hosts)?;
        config["tls"] = json!({
            "cert_file": layout.server_cert(),
            "key_file": layout.server_key(),
            "timeout": 5,
        });
    }
    let text = format!(
        "# Generated by `gantry-registry bus-config`; edits are overwritten.\n{}\n",
        serde_json::to_string_pretty(&config)?
    );
    write_private(&layout.config(), text.as_bytes())?;
    Ok(layout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_kept_and_private_and_the_config_names_them() {
        let tmp = tempfile::TempDir::new().unwrap();
        let dir = tmp.path().to_path_buf();
        let setup = Setup {
            dir: dir.clone(),
            listen: "127.0.0.1:4222".into(),
            store_dir: dir.join("js"),
            hosts: vec!["127.0.0.1".into(), "localhost".into()],
            tls: true,
            inspector: false,
            http_port: None,
        };
        let layout = write(&setup).unwrap();
        let api = read_seed(&layout.role_seed(Role::Api)).unwrap();
        let mode = fs::metadata(layout.role_seed(Role::Api))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "a seed is readable by others");
        let config = fs::read_to_string(layout.config()).unwrap();
        assert!(config.contains(&api.public_key()));
        assert!(config.contains("auth_callout"));
        assert!(
            !config.contains(&api.seed().unwrap()),
            "a seed is in the config"
        );
        assert!(layout.ca().exists() && layout.server_key().exists());

        write(&setup).unwrap();
        let again = read_seed(&layout.role_seed(Role::Api)).unwrap();
        assert_eq!(again.public_key(), api.public_key());
    }
}
