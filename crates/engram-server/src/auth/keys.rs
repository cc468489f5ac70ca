//! The API keys file: who the keys belong to, what they may do, to which
//! spaces. Only a SHA-256 hash of each key is stored, so the file (or a
//! backup of it) does not give the keys away. Keys are long random strings
//! (`engram keys generate`: 256 bits), so an unsalted fast hash is enough:
//! there is nothing to guess a dictionary of.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;
use sha2::{Digest, Sha256};

/// A key's SHA-256.
pub type KeyDigest = [u8; 32];

/// What a key may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Recall, describe, list.
    Read,
    /// Observe, remember, forget, create spaces.
    Write,
    /// Delete spaces and, with `spaces = ["*"]`, the admin routes; implies
    /// read and write.
    Admin,
}

/// The role an operation needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    Read,
    Write,
    Admin,
}

impl Need {
    pub fn as_str(self) -> &'static str {
        match self {
            Need::Read => "read",
            Need::Write => "write",
            Need::Admin => "admin",
        }
    }
}

/// Which spaces a key covers: an exact id, or every id with a prefix
/// (`agent-42-*`; `*` alone is every space).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SpacePattern {
    Exact(String),
    Prefix(String),
}

impl SpacePattern {
    fn parse(s: &str) -> Result<Self, String> {
        match s.strip_suffix('*') {
            Some(prefix) if prefix.contains('*') => {
                Err(format!("space pattern '{s}': '*' may only end a pattern"))
            }
            Some(prefix) => Ok(SpacePattern::Prefix(prefix.to_owned())),
            None if s.is_empty() => Err("an empty space pattern".to_owned()),
            None if s.contains('*') => {
                Err(format!("space pattern '{s}': '*' may only end a pattern"))
            }
            None => Ok(SpacePattern::Exact(s.to_owned())),
        }
    }

    pub fn matches(&self, space: &str) -> bool {
        match self {
            SpacePattern::Exact(id) => id == space,
            SpacePattern::Prefix(p) => space.starts_with(p.as_str()),
        }
    }

    /// `*`: every space.
    pub fn is_everything(&self) -> bool {
        matches!(self, SpacePattern::Prefix(p) if p.is_empty())
    }
}

/// One key, as the file describes it (without the secret).
#[derive(Debug)]
pub struct Key {
    pub name: String,
    pub digest: KeyDigest,
    roles: HashSet<Role>,
    spaces: Vec<SpacePattern>,
}

impl Key {
    /// True when the key covers `space` with any role.
    pub fn covers(&self, space: &str) -> bool {
        self.spaces.iter().any(|p| p.matches(space))
    }

    /// True when the key covers every space (`*`).
    pub fn covers_everything(&self) -> bool {
        self.spaces.iter().any(SpacePattern::is_everything)
    }

    /// True when the key's roles include what `need` asks for (admin
    /// implies read and write).
    pub fn has_role(&self, need: Need) -> bool {
        let admin = self.roles.contains(&Role::Admin);
        admin
            || match need {
                Need::Read => self.roles.contains(&Role::Read),
                Need::Write => self.roles.contains(&Role::Write),
                Need::Admin => false,
            }
    }
}

/// The keys file, parsed and checked.
#[derive(Debug, Default)]
pub struct KeyTable {
    by_digest: HashMap<KeyDigest, Arc<Key>>,
    /// `[metrics] hash`: the key `GET /metrics` then needs.
    pub metrics: Option<KeyDigest>,
}

impl KeyTable {
    pub fn get(&self, digest: &KeyDigest) -> Option<&Arc<Key>> {
        self.by_digest.get(digest)
    }

    pub fn len(&self) -> usize {
        self.by_digest.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_digest.is_empty()
    }

    /// The names of the keys, for limits kept per key.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.by_digest.values().map(|k| k.name.as_str())
    }

    /// Reads and checks the file at `path`.
    ///
    /// # Errors
    /// An unreadable file, TOML errors, and every rule below, with the
    /// entry it concerns.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("reading the API keys file {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("API keys file {}: {e}", path.display()))
    }

    /// Parses the file's text.
    ///
    /// # Errors
    /// TOML errors; an entry without a name, a duplicate name or hash, a
    /// hash that is not `sha256:` and 64 hex digits, no roles, no spaces, or
    /// a bad space pattern.
    pub fn parse(text: &str) -> Result<Self, String> {
        let file: KeysFile = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut table = KeyTable::default();
        let mut names = HashSet::new();
        for (i, entry) in file.keys.into_iter().enumerate() {
            let at = |m: String| format!("[[keys]] entry {} ('{}'): {m}", i + 1, entry.name);
            if entry.name.trim().is_empty() {
                return Err(format!("[[keys]] entry {}: a key needs a name", i + 1));
            }
            if !names.insert(entry.name.clone()) {
                return Err(at("the name is used twice; names must be unique".into()));
            }
            let digest = parse_digest(&entry.hash).map_err(at)?;
            if entry.roles.is_empty() {
                return Err(at(
                    "no roles: give it some of \"read\", \"write\", \"admin\"".into(),
                ));
            }
            if entry.spaces.is_empty() {
                return Err(at(
                    "no spaces: list space ids or prefixes like \"agent-42-*\" (\"*\" for all)"
                        .into(),
                ));
            }
            let spaces = entry
                .spaces
                .iter()
                .map(|s| SpacePattern::parse(s))
                .collect::<Result<Vec<_>, _>>()
                .map_err(at)?;
            let key = Key {
                name: entry.name.clone(),
                digest,
                roles: entry.roles.into_iter().collect(),
                spaces,
            };
            if table.by_digest.insert(digest, Arc::new(key)).is_some() {
                return Err(at("the same hash appears twice".into()));
            }
        }
        if let Some(m) = file.metrics {
            table.metrics = Some(parse_digest(&m.hash).map_err(|e| format!("[metrics]: {e}"))?);
        }
        Ok(table)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysFile {
    #[serde(default)]
    keys: Vec<KeyEntry>,
    #[serde(default)]
    metrics: Option<MetricsEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyEntry {
    name: String,
    hash: String,
    roles: Vec<Role>,
    spaces: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MetricsEntry {
    hash: String,
}

/// The SHA-256 of a key.
pub fn digest(key: &str) -> KeyDigest {
    Sha256::digest(key.as_bytes()).into()
}

/// `sha256:<hex>`, as the keys file writes it.
pub fn hash_string(key: &str) -> String {
    let mut out = String::from("sha256:");
    for b in digest(key) {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

fn parse_digest(s: &str) -> Result<KeyDigest, String> {
    let bad = || {
        format!("hash must be \"sha256:\" and 64 hex digits (engram keys hash KEY prints it); got '{s}'")
    };
    let hex = s.strip_prefix("sha256:").ok_or_else(bad)?;
    if hex.len() != 64 {
        return Err(bad());
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    Ok(out)
}

/// A new random key: `engram_` and 64 hex digits (256 bits from the OS).
pub fn generate() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let mut out = String::from("engram_");
    for b in bytes {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, key: &str, roles: &str, spaces: &str) -> String {
        format!(
            "[[keys]]\nname = \"{name}\"\nhash = \"{}\"\nroles = [{roles}]\nspaces = [{spaces}]\n",
            hash_string(key)
        )
    }

    #[test]
    fn a_key_covers_its_spaces_with_its_roles() {
        let text = entry(
            "a",
            "k1",
            "\"read\", \"write\"",
            "\"agent-42-*\", \"shared\"",
        ) + &entry("root", "k2", "\"admin\"", "\"*\"");
        let t = KeyTable::parse(&text).unwrap();
        assert_eq!(t.len(), 2);
        let a = t.get(&digest("k1")).unwrap();
        assert!(a.covers("agent-42-notes") && a.covers("shared"));
        assert!(!a.covers("agent-4") && !a.covers("shared2") && !a.covers("agent-43-x"));
        assert!(a.has_role(Need::Read) && a.has_role(Need::Write) && !a.has_role(Need::Admin));
        assert!(!a.covers_everything());
        let root = t.get(&digest("k2")).unwrap();
        assert!(root.covers("anything") && root.covers_everything());
        assert!(root.has_role(Need::Read) && root.has_role(Need::Admin));
        assert!(t.get(&digest("k3")).is_none());
    }

    #[test]
    fn bad_files_are_refused_with_the_entry_named() {
        let cases = [
            (entry("a", "k", "", "\"x\""), "no roles"),
            (entry("a", "k", "\"read\"", ""), "no spaces"),
            (entry("a", "k", "\"read\"", "\"a*b\""), "may only end"),
            (entry("a", "k", "\"read\"", "\"\""), "empty space pattern"),
            (entry("a", "k", "\"root\"", "\"x\""), "unknown variant"),
            (entry("", "k", "\"read\"", "\"x\""), "needs a name"),
            (
                entry("a", "k", "\"read\"", "\"x\"") + &entry("a", "j", "\"read\"", "\"x\""),
                "used twice",
            ),
            (
                entry("a", "k", "\"read\"", "\"x\"") + &entry("b", "k", "\"read\"", "\"x\""),
                "same hash",
            ),
            (
                "[[keys]]\nname = \"a\"\nhash = \"md5:00\"\nroles = [\"read\"]\nspaces = [\"x\"]\n"
                    .to_owned(),
                "sha256:",
            ),
            (
                "[[keys]]\nname = \"a\"\nkey = \"plain\"\n".to_owned(),
                "unknown field",
            ),
        ];
        for (text, want) in cases {
            let e = KeyTable::parse(&text).unwrap_err();
            assert!(e.contains(want), "{text:?}: {e}");
        }
    }

    #[test]
    fn generated_keys_are_distinct_and_hash_as_documented() {
        let a = generate();
        assert!(a.starts_with("engram_") && a.len() == 7 + 64, "{a}");
        assert_ne!(a, generate());
        assert_eq!(
            hash_string("abc"),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let t = KeyTable::parse(&format!("[metrics]\nhash = \"{}\"\n", hash_string("m"))).unwrap();
        assert_eq!(t.metrics, Some(digest("m")));
        assert!(t.is_empty());
    }
}
