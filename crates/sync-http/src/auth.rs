//! Credentials: the client's [`Auth`], the server's [`Scope`]d tokens and app secrets, the
//! Starkeep app signature, and the replay cache that makes a signature single-use.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    fmt,
    sync::{Arc, Mutex},
};

use hmac::{Hmac, Mac};
use http::{HeaderMap, HeaderName};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use sync_core::Channel;

type HmacSha256 = Hmac<Sha256>;

/// Header naming the signing app.
pub const APP_ID_HEADER: HeaderName = HeaderName::from_static("x-starkeep-app-id");
/// Header carrying the hex HMAC-SHA256 signature (or the trailer, for streamed uploads).
pub const APP_SIG_HEADER: HeaderName = HeaderName::from_static("x-starkeep-app-sig");
/// Header carrying the signing time in milliseconds since the Unix epoch.
pub const APP_TS_HEADER: HeaderName = HeaderName::from_static("x-starkeep-app-ts");

/// Wall-clock milliseconds since the Unix epoch, injectable so tests control time.
pub type WallClock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// The system clock as a [`WallClock`].
pub fn system_clock() -> WallClock {
    Arc::new(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    })
}

/// How the client proves who it is.
#[derive(Clone, Default)]
#[non_exhaustive]
pub enum Auth {
    /// No credentials (a server configured with an anonymous scope, or a test).
    #[default]
    None,
    /// `Authorization: Bearer <token>`.
    Bearer(String),
    /// The Starkeep app signature: `X-Starkeep-App-Id`, `X-Starkeep-App-Ts` and
    /// `X-Starkeep-App-Sig` = hex HMAC-SHA256 with `secret` over
    /// `{app_id}:{METHOD}:{path}:{ts_ms}:` followed by the exact body bytes.
    AppSignature {
        /// The app id (must equal the app of the channel's path).
        app_id: String,
        /// The app's shared secret.
        secret: String,
    },
}

impl Auth {
    /// A bearer token.
    pub fn bearer(token: impl Into<String>) -> Self {
        Auth::Bearer(token.into())
    }

    /// The Starkeep app signature.
    pub fn app_signature(app_id: impl Into<String>, secret: impl Into<String>) -> Self {
        Auth::AppSignature {
            app_id: app_id.into(),
            secret: secret.into(),
        }
    }
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print a secret.
        match self {
            Auth::None => f.write_str("Auth::None"),
            Auth::Bearer(_) => f.write_str("Auth::Bearer(<redacted>)"),
            Auth::AppSignature { app_id, .. } => f
                .debug_struct("Auth::AppSignature")
                .field("app_id", app_id)
                .field("secret", &"<redacted>")
                .finish(),
        }
    }
}

/// An HMAC over the signed prefix, fed the body as it streams.
#[derive(Clone)]
pub(crate) struct Signer(HmacSha256);

impl Signer {
    pub(crate) fn new(secret: &[u8], app_id: &str, method: &str, path: &str, ts_ms: u64) -> Self {
        // HMAC accepts keys of any length; the error case cannot happen.
        let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes any key length");
        mac.update(format!("{app_id}:{method}:{path}:{ts_ms}:").as_bytes());
        Signer(mac)
    }

    pub(crate) fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    /// The signature as lower-case hex.
    pub(crate) fn finish_hex(self) -> String {
        hex::encode(self.0.finalize().into_bytes())
    }

    /// Constant-time check of a presented signature (hex, either case).
    pub(crate) fn verify_hex(self, presented: &str) -> bool {
        let Ok(bytes) = hex::decode(presented.trim()) else {
            return false;
        };
        self.0.verify_slice(&bytes).is_ok()
    }
}

/// The channels a credential reaches.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Scope {
    /// Every channel: Drive and every app.
    All,
    /// Only these channels.
    Channels(Vec<Channel>),
}

impl Scope {
    /// Whether `channel` is within this scope.
    pub fn allows(&self, channel: &Channel) -> bool {
        match self {
            Scope::All => true,
            Scope::Channels(list) => list.contains(channel),
        }
    }
}

/// Why a request was refused by authentication.
#[derive(Debug)]
pub(crate) enum AuthFailure {
    /// 401: missing or bad credentials.
    Unauthorized(String),
    /// 403: valid credentials, outside their scope.
    Forbidden(String),
    /// 503: the replay cache is full; retry shortly.
    Busy(String),
}

/// The outcome of checking a request's headers.
pub(crate) enum Admission {
    /// Fully authorized (a bearer token or an anonymous scope).
    Granted,
    /// A signature whose MAC must still be fed the body and checked.
    Signed(Box<PendingSignature>),
}

/// Where the presented signature is.
pub(crate) enum PresentedSig {
    Header(String),
    /// Declared in `Trailer:`; it arrives after a streamed body.
    Trailer,
}

/// A signature whose headers checked out; the body decides.
pub(crate) struct PendingSignature {
    pub(crate) app_id: String,
    pub(crate) signer: Signer,
    pub(crate) presented: PresentedSig,
    pub(crate) ts_ms: u64,
}

impl PendingSignature {
    pub(crate) fn update(&mut self, bytes: &[u8]) {
        self.signer.update(bytes);
    }
}

/// Server-side credentials and the replay cache.
pub(crate) struct Authenticator {
    /// SHA-256 of each token, so comparison time does not depend on token length.
    tokens: Vec<([u8; 32], Scope)>,
    /// SHA-256 of each token that may read `/metrics`.
    metrics_tokens: Vec<[u8; 32]>,
    apps: HashMap<String, Vec<u8>>,
    anonymous: Option<Scope>,
    window_ms: u64,
    replay: Mutex<ReplayCache>,
    clock: WallClock,
}

impl Authenticator {
    pub(crate) fn new(
        tokens: Vec<(String, Scope)>,
        apps: HashMap<String, String>,
        anonymous: Option<Scope>,
        window_ms: u64,
        replay_capacity: usize,
        clock: WallClock,
    ) -> Self {
        Self {
            tokens: tokens
                .into_iter()
                .map(|(t, s)| (Sha256::digest(t.as_bytes()).into(), s))
                .collect(),
            metrics_tokens: Vec::new(),
            apps: apps.into_iter().map(|(a, s)| (a, s.into_bytes())).collect(),
            anonymous,
            window_ms,
            replay: Mutex::new(ReplayCache::new(replay_capacity)),
            clock,
        }
    }

    /// Checks the credentials in `headers` for a request to `channel`. `streamed` says
    /// whether the body may carry its signature in a trailer (streamed uploads).
    pub(crate) fn admit(
        &self,
        method: &str,
        path: &str,
        headers: &HeaderMap,
        channel: &Channel,
        streamed: bool,
    ) -> Result<Admission, AuthFailure> {
        let header = |name: &HeaderName| -> Result<Option<&str>, AuthFailure> {
            headers
                .get(name)
                .map(|v| {
                    v.to_str()
                        .map_err(|_| AuthFailure::Unauthorized(format!("{name} is not ASCII")))
                })
                .transpose()
        };
        if let Some(value) = header(&http::header::AUTHORIZATION)? {
            let token = value
                .strip_prefix("Bearer ")
                .or_else(|| value.strip_prefix("bearer "))
                .ok_or_else(|| {
                    AuthFailure::Unauthorized("Authorization must be `Bearer <token>`".into())
                })?;
            let digest: [u8; 32] = Sha256::digest(token.trim().as_bytes()).into();
            // Compare against every token without stopping early.
            let mut found: Option<&Scope> = None;
            for (known, scope) in &self.tokens {
                if bool::from(known.ct_eq(&digest)) && found.is_none() {
                    found = Some(scope);
                }
            }
            let scope =
                found.ok_or_else(|| AuthFailure::Unauthorized("unknown bearer token".into()))?;
            return if scope.allows(channel) {
                Ok(Admission::Granted)
            } else {
                Err(AuthFailure::Forbidden(format!(
                    "this token does not reach the {channel} channel"
                )))
            };
        }

        let app = header(&APP_ID_HEADER)?;
        let ts = header(&APP_TS_HEADER)?;
        let sig = header(&APP_SIG_HEADER)?;
        if app.is_none() && ts.is_none() && sig.is_none() {
            return match &self.anonymous {
                Some(scope) if scope.allows(channel) => Ok(Admission::Granted),
                Some(_) => Err(AuthFailure::Forbidden(format!(
                    "anonymous requests do not reach the {channel} channel"
                ))),
                None => Err(AuthFailure::Unauthorized(
                    "missing credentials: send `Authorization: Bearer <token>` or the \
                     X-Starkeep-App-Id/-Sig/-Ts signature"
                        .into(),
                )),
            };
        }
        let (Some(app_id), Some(ts)) = (app, ts) else {
            return Err(AuthFailure::Unauthorized(
                "incomplete app signature: X-Starkeep-App-Id and X-Starkeep-App-Ts are required"
                    .into(),
            ));
        };
        let presented = match sig {
            Some(s) => PresentedSig::Header(s.to_string()),
            None if streamed && declares_trailer(headers) => PresentedSig::Trailer,
            None => {
                return Err(AuthFailure::Unauthorized(
                    "incomplete app signature: X-Starkeep-App-Sig is missing".into(),
                ))
            }
        };
        let ts_ms: u64 = ts.trim().parse().map_err(|_| {
            AuthFailure::Unauthorized(
                "X-Starkeep-App-Ts must be milliseconds since the epoch".into(),
            )
        })?;
        let now = (self.clock)();
        if now.abs_diff(ts_ms) > self.window_ms {
            return Err(AuthFailure::Unauthorized(format!(
                "X-Starkeep-App-Ts {ts_ms} is outside ±{} s of the server's time {now}; \
                 check the client's clock",
                self.window_ms / 1000
            )));
        }
        let secret = self
            .apps
            .get(app_id)
            .ok_or_else(|| AuthFailure::Unauthorized(format!("unknown app {app_id:?}")))?;
        // An app's signature reaches its own channel only. The claim is checked before the
        // body is read (the request is refused either way), so an upload to the wrong place
        // is not streamed first.
        if *channel != Channel::App(app_id.to_string()) {
            return Err(AuthFailure::Forbidden(format!(
                "app {app_id} may only use its own channel /apps/{app_id}, not {channel}"
            )));
        }
        Ok(Admission::Signed(Box::new(PendingSignature {
            app_id: app_id.to_string(),
            signer: Signer::new(secret, app_id, method, path, ts_ms),
            presented,
            ts_ms,
        })))
    }

    /// Also accepts these bearer tokens on `/metrics` (whatever channels they reach).
    pub(crate) fn with_metrics_tokens(mut self, tokens: &[String]) -> Self {
        self.metrics_tokens = tokens
            .iter()
            .map(|t| Sha256::digest(t.as_bytes()).into())
            .collect();
        self
    }

    /// Checks the credentials of a `GET /metrics`: a bearer token that reaches every
    /// channel or was given the metrics scope, or no credentials when anonymous requests
    /// reach every channel. The figures span every channel, so whoever may read them could
    /// read all of them anyway, or was trusted with them explicitly (decision 0032).
    pub(crate) fn admit_metrics(&self, headers: &HeaderMap) -> Result<(), AuthFailure> {
        if let Some(value) = headers.get(http::header::AUTHORIZATION) {
            let token = value
                .to_str()
                .ok()
                .and_then(|v| {
                    v.strip_prefix("Bearer ")
                        .or_else(|| v.strip_prefix("bearer "))
                })
                .ok_or_else(|| {
                    AuthFailure::Unauthorized("Authorization must be `Bearer <token>`".into())
                })?;
            let digest: [u8; 32] = Sha256::digest(token.trim().as_bytes()).into();
            // Compare against every token without stopping early.
            let mut scope: Option<&Scope> = None;
            for (known, s) in &self.tokens {
                if bool::from(known.ct_eq(&digest)) && scope.is_none() {
                    scope = Some(s);
                }
            }
            let mut metrics = false;
            for known in &self.metrics_tokens {
                metrics |= bool::from(known.ct_eq(&digest));
            }
            return match (metrics, scope) {
                (true, _) | (_, Some(Scope::All)) => Ok(()),
                (false, Some(_)) => Err(AuthFailure::Forbidden(
                    "this token does not reach /metrics: use a token for every channel or one \
                     with the metrics scope"
                        .into(),
                )),
                (false, None) => Err(AuthFailure::Unauthorized("unknown bearer token".into())),
            };
        }
        if headers.contains_key(APP_ID_HEADER) || headers.contains_key(APP_SIG_HEADER) {
            return Err(AuthFailure::Unauthorized(
                "an app signature does not reach /metrics: send `Authorization: Bearer <token>` \
                 with a token for every channel or with the metrics scope"
                    .into(),
            ));
        }
        match &self.anonymous {
            Some(Scope::All) => Ok(()),
            Some(_) => Err(AuthFailure::Forbidden(
                "anonymous requests do not reach /metrics".into(),
            )),
            None => Err(AuthFailure::Unauthorized(
                "missing credentials: send `Authorization: Bearer <token>` with a token for \
                 every channel or with the metrics scope"
                    .into(),
            )),
        }
    }

    /// Checks a signature once the whole body went through it. `trailer` is the value of
    /// the signature trailer, if one arrived.
    pub(crate) fn verify(
        &self,
        pending: Box<PendingSignature>,
        trailer: Option<&str>,
    ) -> Result<(), AuthFailure> {
        let presented = match &pending.presented {
            PresentedSig::Header(s) => s.clone(),
            PresentedSig::Trailer => trailer
                .ok_or_else(|| {
                    AuthFailure::Unauthorized(
                        "the X-Starkeep-App-Sig trailer did not arrive".into(),
                    )
                })?
                .to_string(),
        };
        let PendingSignature {
            app_id,
            signer,
            ts_ms,
            ..
        } = *pending;
        if !signer.verify_hex(&presented) {
            return Err(AuthFailure::Unauthorized(
                "bad app signature: HMAC-SHA256 over `{appId}:{METHOD}:{path}:{tsMs}:` + body \
                 does not match"
                    .into(),
            ));
        }
        let now = (self.clock)();
        let mut key = Sha256::new();
        key.update(app_id.as_bytes());
        key.update([0]);
        key.update(presented.trim().to_ascii_lowercase().as_bytes());
        let key: [u8; 32] = key.finalize().into();
        let mut cache = self.replay.lock().unwrap_or_else(|e| e.into_inner());
        cache.insert(key, ts_ms.saturating_add(self.window_ms), now)
    }
}

fn declares_trailer(headers: &HeaderMap) -> bool {
    headers
        .get_all(http::header::TRAILER)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|name| name.trim().eq_ignore_ascii_case(APP_SIG_HEADER.as_str()))
}

/// Signatures seen within the time window, so each is accepted once. Bounded: when full of
/// unexpired entries it refuses new signatures (fail closed) rather than forget one.
pub(crate) struct ReplayCache {
    seen: HashSet<[u8; 32]>,
    by_expiry: BTreeSet<(u64, [u8; 32])>,
    capacity: usize,
}

impl ReplayCache {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            seen: HashSet::new(),
            by_expiry: BTreeSet::new(),
            capacity: capacity.max(1),
        }
    }

    pub(crate) fn insert(
        &mut self,
        key: [u8; 32],
        expires_ms: u64,
        now_ms: u64,
    ) -> Result<(), AuthFailure> {
        // Forget what can no longer be replayed: its timestamp is outside the window now.
        while let Some(&(expiry, k)) = self.by_expiry.first() {
            if expiry >= now_ms {
                break;
            }
            self.by_expiry.pop_first();
            self.seen.remove(&k);
        }
        if self.seen.contains(&key) {
            return Err(AuthFailure::Unauthorized(
                "replayed app signature: each signed request is accepted once".into(),
            ));
        }
        if self.seen.len() >= self.capacity {
            return Err(AuthFailure::Busy(
                "too many signed requests in the replay window; retry shortly".into(),
            ));
        }
        self.seen.insert(key);
        self.by_expiry.insert((expires_ms, key));
        Ok(())
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.seen.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_the_documented_message() {
        let mut s = Signer::new(
            b"secret",
            "photos",
            "POST",
            "/apps/photos/sync/exchange",
            42,
        );
        s.update(b"{}");
        let mut mac = HmacSha256::new_from_slice(b"secret").unwrap();
        mac.update(b"photos:POST:/apps/photos/sync/exchange:42:{}");
        assert_eq!(s.finish_hex(), hex::encode(mac.finalize().into_bytes()));
    }

    #[test]
    fn replay_cache_refuses_repeats_forgets_expired_and_fails_closed_when_full() {
        let mut c = ReplayCache::new(2);
        assert!(c.insert([1; 32], 100, 0).is_ok());
        assert!(matches!(
            c.insert([1; 32], 100, 50),
            Err(AuthFailure::Unauthorized(_))
        ));
        assert!(c.insert([2; 32], 100, 50).is_ok());
        assert!(matches!(
            c.insert([3; 32], 100, 50),
            Err(AuthFailure::Busy(_))
        ));
        // Past the expiry both are forgotten.
        assert!(c.insert([3; 32], 300, 101).is_ok());
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn debug_never_prints_secrets() {
        let s = format!(
            "{:?} {:?}",
            Auth::bearer("tok"),
            Auth::app_signature("a", "sec")
        );
        assert!(!s.contains("tok") && !s.contains("sec\""), "{s}");
    }
}
