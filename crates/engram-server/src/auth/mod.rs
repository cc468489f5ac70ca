//! Authentication and authorization, shared by every transport.
//!
//! A server started with `security.api_keys` authenticates every call by
//! its bearer key ([`Auth::authenticate`]) and then checks, for the space
//! the call touches, that the key covers it with the role the call needs
//! ([`Auth::authorize`]). Streams are authenticated when they open and
//! checked per message ([`Auth::stream_access`]), against the keys file as
//! it is *now*: a key removed by a reload (SIGHUP) stops working on open
//! streams too, without dropping them. The per-key limits (open streams,
//! request rate) are kept here as well.
//!
//! Without a keys file every call is allowed ([`Principal::Open`]).

pub mod keys;
mod rate;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use engram_core::access::{Denial, Operation, StreamAccess};
use parking_lot::{Mutex, RwLock};

use crate::config::LimitsConfig;
pub use keys::{Key, KeyDigest, KeyTable, Need};
use rate::RateLimiter;

/// Who a call comes from.
#[derive(Clone, Debug)]
pub enum Principal {
    /// The server has no keys file: everything is allowed.
    Open,
    /// A key from the keys file, as it was when the call was authenticated.
    Key(Arc<Key>),
}

impl Principal {
    /// The key's name, for logs and limits.
    pub fn name(&self) -> &str {
        match self {
            Principal::Open => "(unauthenticated)",
            Principal::Key(k) => &k.name,
        }
    }
}

/// Why a call is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthError {
    /// No key, a malformed header, or a key the file does not list: 401 /
    /// UNAUTHENTICATED.
    Unauthenticated(String),
    /// A valid key without the grant: 403 / PERMISSION_DENIED.
    PermissionDenied(String),
    /// Over the key's request rate: 429 / RESOURCE_EXHAUSTED.
    RateLimited {
        message: String,
        retry_after: Duration,
    },
    /// Over the key's open streams: 429 / RESOURCE_EXHAUSTED.
    TooManySessions(String),
}

impl AuthError {
    pub fn message(&self) -> &str {
        match self {
            AuthError::Unauthenticated(m)
            | AuthError::PermissionDenied(m)
            | AuthError::TooManySessions(m) => m,
            AuthError::RateLimited { message, .. } => message,
        }
    }
}

impl std::fmt::Display for AuthError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.message())
    }
}

/// The keys file, the limits, and what they keep per key. Cheap to clone.
#[derive(Clone)]
pub struct Auth {
    inner: Arc<Inner>,
}

struct Inner {
    /// None: no keys file, everything allowed.
    path: Option<PathBuf>,
    table: RwLock<Arc<KeyTable>>,
    limits: LimitsConfig,
    rates: RateLimiter,
    /// Open streams per key name.
    sessions: Mutex<HashMap<String, usize>>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("path", &self.inner.path)
            .field("keys", &self.inner.table.read().len())
            .finish_non_exhaustive()
    }
}

impl Default for Auth {
    /// No keys: everything allowed.
    fn default() -> Self {
        Self::build(None, KeyTable::default(), LimitsConfig::default())
    }
}

impl Auth {
    /// Loads the keys file at `path` (None: no authentication).
    ///
    /// # Errors
    /// The file cannot be read or is invalid (the message says where).
    pub fn load(path: Option<PathBuf>, limits: LimitsConfig) -> Result<Self, String> {
        let table = match &path {
            Some(p) => KeyTable::load(p)?,
            None => KeyTable::default(),
        };
        Ok(Self::build(path, table, limits))
    }

    fn build(path: Option<PathBuf>, table: KeyTable, limits: LimitsConfig) -> Self {
        let rates = RateLimiter::new(limits.requests_per_second_per_key, limits.burst_per_key);
        Auth {
            inner: Arc::new(Inner {
                path,
                table: RwLock::new(Arc::new(table)),
                limits,
                rates,
                sessions: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// True when calls need a key.
    pub fn enabled(&self) -> bool {
        self.inner.path.is_some()
    }

    /// Keys in the file now.
    pub fn key_count(&self) -> usize {
        self.inner.table.read().len()
    }

    /// Reads the keys file again (SIGHUP). On error the keys in use stay.
    ///
    /// # Errors
    /// The file cannot be read or is invalid.
    pub fn reload(&self) -> Result<usize, String> {
        let Some(path) = &self.inner.path else {
            return Ok(0);
        };
        let table = KeyTable::load(path)?;
        let n = table.len();
        self.inner
            .rates
            .retain(|name| table.names().any(|k| k == name));
        *self.inner.table.write() = Arc::new(table);
        Ok(n)
    }

    /// Authenticates by an `authorization` header value (`Bearer KEY`).
    ///
    /// # Errors
    /// [`AuthError::Unauthenticated`] for a missing or malformed header or
    /// an unknown key.
    pub fn authenticate(&self, header: Option<&str>) -> Result<Principal, AuthError> {
        if !self.enabled() {
            return Ok(Principal::Open);
        }
        let Some(header) = header else {
            return Err(AuthError::Unauthenticated(
                "missing API key: send it as 'authorization: Bearer <key>'".into(),
            ));
        };
        let key = bearer(header).ok_or_else(|| {
            AuthError::Unauthenticated(
                "malformed authorization header: expected 'Bearer <key>'".into(),
            )
        })?;
        self.authenticate_key(key)
    }

    /// Authenticates a bare key (WebSocket subprotocol or `init.api_key`).
    ///
    /// # Errors
    /// [`AuthError::Unauthenticated`] for an unknown key.
    pub fn authenticate_key(&self, key: &str) -> Result<Principal, AuthError> {
        if !self.enabled() {
            return Ok(Principal::Open);
        }
        let digest = keys::digest(key);
        match self.inner.table.read().get(&digest) {
            Some(k) => Ok(Principal::Key(k.clone())),
            None => Err(AuthError::Unauthenticated(
                "unknown API key (not in the server's keys file)".into(),
            )),
        }
    }

    /// Checks that `p` may do what `need` stands for on `space`, and takes
    /// one request from the key's rate.
    ///
    /// # Errors
    /// [`AuthError::PermissionDenied`] without the grant,
    /// [`AuthError::RateLimited`] over the rate.
    pub fn authorize(&self, p: &Principal, space: &str, need: Need) -> Result<(), AuthError> {
        let Principal::Key(key) = p else {
            return Ok(());
        };
        grant(key, space, need)?;
        self.charge(key)
    }

    /// Checks a call that is not about one space (listing spaces): only
    /// the rate.
    ///
    /// # Errors
    /// [`AuthError::RateLimited`].
    pub fn authorize_any(&self, p: &Principal) -> Result<(), AuthError> {
        match p {
            Principal::Open => Ok(()),
            Principal::Key(key) => self.charge(key),
        }
    }

    /// The admin routes that act on the whole server: an admin key that
    /// covers every space (`spaces = ["*"]`).
    ///
    /// # Errors
    /// [`AuthError::PermissionDenied`] otherwise.
    pub fn authorize_server_admin(&self, p: &Principal) -> Result<(), AuthError> {
        let Principal::Key(key) = p else {
            return Ok(());
        };
        if !(key.has_role(Need::Admin) && key.covers_everything()) {
            return Err(AuthError::PermissionDenied(format!(
                "key '{}' may not use the server's admin routes: they need the admin role on every space (spaces = [\"*\"])",
                key.name
            )));
        }
        self.charge(key)
    }

    /// True when `p` covers `space` with any role (what a listing shows).
    pub fn covers(&self, p: &Principal, space: &str) -> bool {
        match p {
            Principal::Open => true,
            Principal::Key(k) => k.covers(space),
        }
    }

    /// `GET /metrics`: open unless the keys file has a `[metrics]` key;
    /// then that key, or an admin key covering every space.
    ///
    /// # Errors
    /// [`AuthError::Unauthenticated`] without either.
    pub fn authorize_metrics(&self, header: Option<&str>) -> Result<(), AuthError> {
        let table = self.inner.table.read().clone();
        let Some(metrics) = table.metrics else {
            return Ok(());
        };
        let key = header.and_then(bearer).ok_or_else(|| {
            AuthError::Unauthenticated(
                "metrics need a key: send 'authorization: Bearer <metrics key>'".into(),
            )
        })?;
        let d = keys::digest(key);
        if d == metrics {
            return Ok(());
        }
        match table.get(&d) {
            Some(k) if k.has_role(Need::Admin) && k.covers_everything() => Ok(()),
            Some(k) => Err(AuthError::PermissionDenied(format!(
                "key '{}' may not read metrics: use the [metrics] key or an admin key on every space",
                k.name
            ))),
            None => Err(AuthError::Unauthenticated(
                "unknown API key (not in the server's keys file)".into(),
            )),
        }
    }

    /// What a stream opened by `p` may do, asked per message against the
    /// keys file as it is then.
    pub fn stream_access(&self, p: &Principal) -> Arc<dyn StreamAccess> {
        match p {
            Principal::Open => Arc::new(engram_core::access::AllowAll),
            Principal::Key(k) => Arc::new(KeyAccess {
                auth: self.clone(),
                digest: k.digest,
                name: k.name.clone(),
            }),
        }
    }

    /// Counts one more open stream for `p`; the guard gives it back.
    ///
    /// # Errors
    /// [`AuthError::TooManySessions`] at `limits.max_sessions_per_key`.
    pub fn open_stream(&self, p: &Principal) -> Result<StreamGuard, AuthError> {
        let Principal::Key(k) = p else {
            return Ok(StreamGuard { release: None });
        };
        let max = self.inner.limits.max_sessions_per_key;
        let mut open = self.inner.sessions.lock();
        let n = open.entry(k.name.clone()).or_insert(0);
        if *n >= max {
            return Err(AuthError::TooManySessions(format!(
                "key '{}' already has {max} open streams (limits.max_sessions_per_key); close one first",
                k.name
            )));
        }
        *n += 1;
        Ok(StreamGuard {
            release: Some((self.clone(), k.name.clone())),
        })
    }

    /// Open streams of the key named `name`.
    pub fn open_streams(&self, name: &str) -> usize {
        self.inner.sessions.lock().get(name).copied().unwrap_or(0)
    }

    fn charge(&self, key: &Key) -> Result<(), AuthError> {
        self.inner
            .rates
            .take(&key.name)
            .map_err(|retry_after| AuthError::RateLimited {
                message: format!(
                    "key '{}' is over its rate of {} requests/s (limits.requests_per_second_per_key); retry after {} ms",
                    key.name,
                    self.inner.limits.requests_per_second_per_key,
                    retry_after.as_millis().max(1)
                ),
                retry_after,
            })
    }
}

/// Held by an open stream; gives its place back when dropped.
#[must_use]
pub struct StreamGuard {
    release: Option<(Auth, String)>,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if let Some((auth, name)) = self.release.take() {
            let mut open = auth.inner.sessions.lock();
            if let Some(n) = open.get_mut(&name) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    open.remove(&name);
                }
            }
        }
    }
}

/// The checks of a stream opened with a key: the key as the file has it
/// now, so a reload that removes or narrows it applies at once.
struct KeyAccess {
    auth: Auth,
    digest: KeyDigest,
    name: String,
}

impl StreamAccess for KeyAccess {
    fn covers(&self, space: &str) -> bool {
        let table = self.auth.inner.table.read();
        table.get(&self.digest).is_some_and(|k| k.covers(space))
    }

    fn check(&self, space: &str, op: Operation) -> Result<(), Denial> {
        let key = self.auth.inner.table.read().get(&self.digest).cloned();
        let Some(key) = key else {
            return Err(Denial::Unauthenticated(format!(
                "key '{}' was removed from the server's keys file",
                self.name
            )));
        };
        let need = match op {
            Operation::Read => Need::Read,
            Operation::Write => Need::Write,
        };
        match self.auth.authorize(&Principal::Key(key), space, need) {
            Ok(()) => Ok(()),
            Err(AuthError::RateLimited {
                message,
                retry_after,
            }) => Err(Denial::RateLimited {
                message,
                retry_after,
            }),
            Err(AuthError::Unauthenticated(m)) => Err(Denial::Unauthenticated(m)),
            Err(e) => Err(Denial::PermissionDenied(e.message().to_owned())),
        }
    }
}

fn grant(key: &Key, space: &str, need: Need) -> Result<(), AuthError> {
    if !key.covers(space) {
        return Err(AuthError::PermissionDenied(format!(
            "key '{}' does not cover space '{space}'",
            key.name
        )));
    }
    if !key.has_role(need) {
        return Err(AuthError::PermissionDenied(format!(
            "key '{}' lacks the {} role on space '{space}'",
            key.name,
            need.as_str()
        )));
    }
    Ok(())
}

/// The key of `Bearer KEY` (the scheme in any case).
fn bearer(header: &str) -> Option<&str> {
    let (scheme, key) = header.trim().split_once(' ')?;
    let key = key.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !key.is_empty()).then_some(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table_file(dir: &std::path::Path, text: &str) -> PathBuf {
        let p = dir.join("keys.toml");
        std::fs::write(&p, text).unwrap();
        p
    }

    fn entry(name: &str, key: &str, roles: &str, spaces: &str) -> String {
        format!(
            "[[keys]]\nname = \"{name}\"\nhash = \"{}\"\nroles = [{roles}]\nspaces = [{spaces}]\n",
            keys::hash_string(key)
        )
    }

    #[test]
    fn calls_are_authenticated_then_authorized_per_space_and_role() {
        let dir = tempfile::tempdir().unwrap();
        let path = table_file(
            dir.path(),
            &(entry("w", "kw", "\"write\"", "\"a-*\"") + &entry("r", "kr", "\"read\"", "\"a-1\"")),
        );
        let auth = Auth::load(Some(path), LimitsConfig::default()).unwrap();
        assert!(matches!(
            auth.authenticate(None),
            Err(AuthError::Unauthenticated(_))
        ));
        assert!(matches!(
            auth.authenticate(Some("Basic kw")),
            Err(AuthError::Unauthenticated(_))
        ));
        assert!(matches!(
            auth.authenticate(Some("Bearer nope")),
            Err(AuthError::Unauthenticated(_))
        ));
        let w = auth.authenticate(Some("bearer kw")).unwrap();
        assert_eq!(w.name(), "w");
        auth.authorize(&w, "a-9", Need::Write).unwrap();
        let e = auth.authorize(&w, "a-9", Need::Read).unwrap_err();
        assert!(e.message().contains("lacks the read role"), "{e}");
        let e = auth.authorize(&w, "b", Need::Write).unwrap_err();
        assert!(matches!(e, AuthError::PermissionDenied(_)));
        let r = auth.authenticate(Some("Bearer kr")).unwrap();
        assert!(auth.covers(&r, "a-1") && !auth.covers(&r, "a-2"));
        assert!(auth.authorize_server_admin(&r).is_err());
        // Without a file, everything is allowed.
        let open = Auth::default();
        let p = open.authenticate(None).unwrap();
        open.authorize(&p, "x", Need::Admin).unwrap();
        open.authorize_server_admin(&p).unwrap();
    }

    #[test]
    fn a_reload_applies_to_open_streams_and_a_bad_file_keeps_the_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = table_file(dir.path(), &entry("w", "kw", "\"write\"", "\"s\""));
        let auth = Auth::load(Some(path.clone()), LimitsConfig::default()).unwrap();
        let p = auth.authenticate(Some("Bearer kw")).unwrap();
        let access = auth.stream_access(&p);
        access.check("s", Operation::Write).unwrap();
        std::fs::write(&path, "not toml [").unwrap();
        assert!(auth.reload().is_err());
        access.check("s", Operation::Write).unwrap();
        std::fs::write(&path, entry("w", "kw", "\"read\"", "\"s\"")).unwrap();
        assert_eq!(auth.reload().unwrap(), 1);
        assert!(matches!(
            access.check("s", Operation::Write),
            Err(Denial::PermissionDenied(_))
        ));
        access.check("s", Operation::Read).unwrap();
        std::fs::write(&path, entry("other", "ko", "\"read\"", "\"s\"")).unwrap();
        auth.reload().unwrap();
        assert!(matches!(
            access.check("s", Operation::Read),
            Err(Denial::Unauthenticated(_))
        ));
        assert!(auth.authenticate(Some("Bearer kw")).is_err());
    }

    #[test]
    fn streams_per_key_are_bounded_and_given_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = table_file(dir.path(), &entry("w", "kw", "\"write\"", "\"s\""));
        let limits = LimitsConfig {
            max_sessions_per_key: 2,
            ..LimitsConfig::default()
        };
        let auth = Auth::load(Some(path), limits).unwrap();
        let p = auth.authenticate(Some("Bearer kw")).unwrap();
        let a = auth.open_stream(&p).unwrap();
        let _b = auth.open_stream(&p).unwrap();
        assert!(matches!(
            auth.open_stream(&p),
            Err(AuthError::TooManySessions(_))
        ));
        drop(a);
        assert_eq!(auth.open_streams("w"), 1);
        let _c = auth.open_stream(&p).unwrap();
    }

    #[test]
    fn the_rate_is_per_key_and_says_when_to_retry() {
        let dir = tempfile::tempdir().unwrap();
        let path = table_file(
            dir.path(),
            &(entry("a", "ka", "\"read\"", "\"*\"") + &entry("b", "kb", "\"read\"", "\"*\"")),
        );
        let limits = LimitsConfig {
            requests_per_second_per_key: 2.0,
            burst_per_key: 3,
            ..LimitsConfig::default()
        };
        let auth = Auth::load(Some(path), limits).unwrap();
        let a = auth.authenticate(Some("Bearer ka")).unwrap();
        let b = auth.authenticate(Some("Bearer kb")).unwrap();
        for _ in 0..3 {
            auth.authorize(&a, "s", Need::Read).unwrap();
        }
        match auth.authorize(&a, "s", Need::Read) {
            Err(AuthError::RateLimited { retry_after, .. }) => {
                assert!(retry_after > Duration::ZERO && retry_after <= Duration::from_millis(500))
            }
            other => panic!("expected rate limited, got {other:?}"),
        }
        auth.authorize(&b, "s", Need::Read).unwrap();
    }
}
