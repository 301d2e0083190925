//! Secrets in `bridges.toml`: a literal, `{ env = "NAME" }` or
//! `{ file = "path" }`. A relative file resolves against
//! `$CREDENTIALS_DIRECTORY` when set (systemd `LoadCredential=`), else against
//! the config file's directory. Errors name where the secret was looked for,
//! never its value; resolved secrets are `SecretString`s (redacted in Debug).

use secrecy::SecretString;
use serde::Deserialize;
use std::path::Path;

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawSecret {
    Literal(String),
    Env(EnvSecret),
    File(FileSecret),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvSecret {
    pub env: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSecret {
    pub file: String,
}

impl RawSecret {
    /// The secret's value, read now. Trailing newlines of a file are dropped.
    pub fn resolve(&self, config_dir: &Path) -> Result<SecretString, String> {
        match self {
            RawSecret::Literal(s) => Ok(SecretString::from(s.clone())),
            RawSecret::Env(EnvSecret { env }) => match std::env::var(env) {
                Ok(v) if !v.is_empty() => {
                    super::fingerprint::record(v.as_bytes());
                    Ok(SecretString::from(v))
                }
                Ok(_) => Err(format!("environment variable `{env}` is empty")),
                Err(_) => Err(format!("environment variable `{env}` is not set")),
            },
            RawSecret::File(FileSecret { file }) => {
                let path = Path::new(file);
                let path = if path.is_absolute() {
                    path.to_path_buf()
                } else if let Some(dir) = std::env::var_os("CREDENTIALS_DIRECTORY") {
                    Path::new(&dir).join(path)
                } else {
                    config_dir.join(path)
                };
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| format!("cannot read secret file {}: {e}", path.display()))?;
                super::fingerprint::record(text.as_bytes());
                let value = text.trim_end_matches(['\r', '\n']).to_string();
                if value.is_empty() {
                    return Err(format!("secret file {} is empty", path.display()));
                }
                Ok(SecretString::from(value))
            }
        }
    }

    /// Whether the secret is written in the config file itself.
    pub fn is_literal(&self) -> bool {
        matches!(self, RawSecret::Literal(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[derive(Deserialize)]
    struct T {
        s: RawSecret,
    }

    fn resolve(toml_text: &str, dir: &Path) -> Result<String, String> {
        let t: T = toml::from_str(toml_text).map_err(|e| e.to_string())?;
        t.s.resolve(dir).map(|s| s.expose_secret().to_string())
    }

    #[test]
    fn literal_env_and_file() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(resolve("s = \"abc\"", dir.path()).unwrap(), "abc");
        std::fs::write(dir.path().join("key"), "from-file\n").unwrap();
        assert_eq!(
            resolve("s = { file = \"key\" }", dir.path()).unwrap(),
            "from-file"
        );
        let e = resolve("s = { env = \"FHIR_BRIDGE_TEST_NO_SUCH_VAR\" }", dir.path()).unwrap_err();
        assert_eq!(
            e,
            "environment variable `FHIR_BRIDGE_TEST_NO_SUCH_VAR` is not set"
        );
        let e = resolve("s = { file = \"missing\" }", dir.path()).unwrap_err();
        assert!(e.starts_with("cannot read secret file"), "{e}");
        assert!(resolve("s = { nope = \"x\" }", dir.path()).is_err());
    }
}
