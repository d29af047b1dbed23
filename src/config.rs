//! The TOML configuration file (`tessera --config FILE`): every default of the product is a key
//! here. Missing keys take the defaults documented on each field; unknown keys are an error, so
//! a typo never silently leaves a default in place.
//!
//! ```toml
//! [server]
//! listen = "127.0.0.1:8080"
//! public_url = "https://files.example.com"   # used in tus Location headers and signed links
//!
//! [uploads]
//! max_upload = "5GiB"
//! session_ttl = "24h"
//!
//! [links]
//! default_ttl = "1h"
//! max_ttl = "7d"
//!
//! [categories.images]                          # replaces the built-in category list
//! extensions = ["jpg", "jpeg", "png"]
//! mime_types = ["image/jpeg", "image/png"]
//! max_size = "10MB"
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytesize::ByteSize;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, Result};
use crate::store::Config;
use crate::validate::{CategoryRule, Policy};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    pub server: ServerSettings,
    pub uploads: UploadSettings,
    pub links: LinkSettings,
    pub auth: AuthSettings,
    /// Upload categories. When present, replaces the built-in list (SPEC §2 defaults plus
    /// `other`) as a whole, so what is allowed is exactly what the file says.
    pub categories: Option<BTreeMap<String, CategoryRule>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSettings {
    /// Default `127.0.0.1:8080`: loopback until someone decides otherwise.
    pub listen: SocketAddr,
    /// The URL clients reach the service at (no trailing slash). Default: `http://` + listen.
    pub public_url: Option<String>,
    /// Build URLs from `X-Forwarded-Proto`/`X-Forwarded-Host` (only behind a trusted proxy).
    /// Default false.
    pub trust_forwarded: bool,
    /// Threads for engine work (puts, gets) off the async runtime. Default 0 = tokio's default
    /// blocking pool.
    pub worker_threads: usize,
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            public_url: None,
            trust_forwarded: false,
            worker_threads: 0,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UploadSettings {
    /// Largest single upload (any route). Default 5 GiB.
    pub max_upload: ByteSize,
    /// A resumable session with no activity for this long expires. Default 24 h.
    #[serde(with = "duration")]
    pub session_ttl: Duration,
    /// How often `serve` sweeps expired sessions. Default 10 min.
    #[serde(with = "duration")]
    pub sweep_interval: Duration,
}

impl Default for UploadSettings {
    fn default() -> Self {
        UploadSettings {
            max_upload: ByteSize::gib(5),
            session_ttl: Duration::from_secs(24 * 3600),
            sweep_interval: Duration::from_secs(600),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LinkSettings {
    /// The HMAC key for signed links, at least 32 bytes, as hex. Default: a random key kept in
    /// `<store>/signing.key` (created on first start, mode 0600).
    pub signing_key: Option<String>,
    /// Keys still accepted for links signed before a rotation (hex).
    pub previous_keys: Vec<String>,
    /// Life of a link when the request does not say. Default 1 h.
    #[serde(with = "duration")]
    pub default_ttl: Duration,
    /// Longest life a link may ask for. Default 7 days.
    #[serde(with = "duration")]
    pub max_ttl: Duration,
}

impl Default for LinkSettings {
    fn default() -> Self {
        LinkSettings {
            signing_key: None,
            previous_keys: Vec::new(),
            default_ttl: Duration::from_secs(3600),
            max_ttl: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSettings {
    /// On the first start with no users, create `admin` and print its token once. Default true.
    pub bootstrap_admin: bool,
}

impl Default for AuthSettings {
    fn default() -> Self {
        AuthSettings {
            bootstrap_admin: true,
        }
    }
}

impl Settings {
    /// Reads a configuration file; errors name the file and the offending key.
    pub fn load(path: &Path) -> Result<Settings> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            context: format!("reading configuration {}", path.display()),
            source,
        })?;
        Settings::parse(&text)
            .map_err(|e| Error::InvalidInput(format!("configuration {}: {e}", path.display())))
    }

    pub fn parse(text: &str) -> std::result::Result<Settings, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// The validation policy these settings ask for.
    pub fn policy(&self) -> Policy {
        match &self.categories {
            Some(c) => Policy {
                categories: c.clone(),
            },
            None => Policy::default(),
        }
    }

    /// The engine configuration these settings ask for (limits, categories); the rest of
    /// [`Config`] keeps its defaults.
    pub fn store_config(&self) -> Config {
        Config {
            max_upload: self.uploads.max_upload.as_u64(),
            upload_ttl: self.uploads.session_ttl,
            policy: Arc::new(self.policy()),
            ..Config::default()
        }
    }

    /// The base URL for links the service hands out.
    pub fn public_url(&self) -> String {
        match &self.server.public_url {
            Some(u) => u.trim_end_matches('/').to_string(),
            None => format!("http://{}", self.server.listen),
        }
    }
}

/// Durations as humantime strings ("90s", "24h", "7d").
mod duration {
    use super::*;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_round_trip_and_typos_are_refused() {
        let d = Settings::default();
        let text = toml::to_string(&d).unwrap();
        let back = Settings::parse(&text).unwrap();
        assert_eq!(back.uploads.session_ttl, Duration::from_secs(86400));
        assert_eq!(back.server.listen, d.server.listen);

        let s = Settings::parse(
            "[server]\nlisten = \"127.0.0.1:9999\"\n[uploads]\nmax_upload = \"1GiB\"\nsession_ttl = \"2h\"\n",
        )
        .unwrap();
        assert_eq!(s.server.listen.port(), 9999);
        assert_eq!(s.uploads.max_upload, ByteSize::gib(1));
        assert_eq!(s.uploads.session_ttl, Duration::from_secs(7200));
        assert_eq!(s.public_url(), "http://127.0.0.1:9999");

        let err = Settings::parse("[server]\nlisen = \"127.0.0.1:1\"\n").unwrap_err();
        assert!(err.contains("lisen"), "{err}");
        assert!(Settings::parse("[uploads]\nsession_ttl = \"soon\"\n").is_err());
    }
}
