//! Bearer-token authentication of the admin API's mutating routes (RFC 6750).
//!
//! What it decides: whether a request may change something. `GET` and `HEAD` always pass (they
//! read); any other method — `POST`, `DELETE` and whatever a later route adds — needs
//! `Authorization: Bearer <token>` (RFC 6750 §2.1) with the token of `admin.token_file`, when
//! one is configured. Without a token file every request passes, and [`crate::cluster::config`]
//! refuses to bind such an API anywhere but loopback.
//!
//! Call order: [`AdminAuth::load`] with the configuration, before any socket is bound (a bad file
//! stops `shoal up`); [`AdminAuth::authorize`] per request (the admin server's middleware);
//! [`AdminAuth::reload`] when the operator replaced the file (SIGHUP). A failed reload keeps the
//! token in force.
//!
//! The token is the file's content with surrounding whitespace trimmed: visible ASCII only (it
//! travels in a header), [`MIN_TOKEN_LEN`]..=[`MAX_TOKEN_LEN`] characters. The server keeps only
//! its SHA-256 digest and compares digests in constant time ([`ct_eq`]), so neither the token nor
//! its length shows in the time an answer takes. Tokens are never logged, and [`BearerToken`]'s
//! `Debug` redacts them.

use std::fmt;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use sha2::{Digest as _, Sha256};

use crate::sync::lock;

/// Fewest characters a token has: 16 visible ASCII characters, ~100 bits when random.
pub const MIN_TOKEN_LEN: usize = 16;
/// Most characters a token has.
pub const MAX_TOKEN_LEN: usize = 4096;
/// The configuration key of the token file, as errors name it.
pub const TOKEN_FILE_KEY: &str = "admin.token_file";

/// A token file holds more than this: it is refused unread.
const MAX_FILE_BYTES: u64 = 64 << 10;

/// What is wrong with a token's text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenRule {
    #[error("the file is empty: put a bearer token of at least {MIN_TOKEN_LEN} characters in it")]
    Empty,
    #[error("the token is {len} characters long; at least {MIN_TOKEN_LEN} are needed")]
    TooShort { len: usize },
    #[error("the token is longer than {MAX_TOKEN_LEN} characters")]
    TooLong,
    #[error("the token may hold only visible ASCII characters (no spaces or control characters)")]
    BadCharacter,
}

/// Why a token file was refused. `key` is the setting or flag that named the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenFileError {
    #[error("{key} {}: cannot read it: {source}", path.display())]
    Read {
        key: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{key} {}: {rule}", path.display())]
    Invalid {
        key: &'static str,
        path: PathBuf,
        rule: TokenRule,
    },
}

/// A checked bearer token (see the module doc). `Debug` does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct BearerToken(String);

impl fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BearerToken(<{} characters, redacted>)", self.0.len())
    }
}

impl BearerToken {
    /// `text` trimmed, when it is a valid token.
    pub fn parse(text: &str) -> Result<Self, TokenRule> {
        let t = text.trim();
        if t.is_empty() {
            return Err(TokenRule::Empty);
        }
        if !t.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(TokenRule::BadCharacter);
        }
        if t.len() < MIN_TOKEN_LEN {
            return Err(TokenRule::TooShort { len: t.len() });
        }
        if t.len() > MAX_TOKEN_LEN {
            return Err(TokenRule::TooLong);
        }
        Ok(Self(t.to_string()))
    }

    /// The token in the file at `path`; errors name `key` (the setting or flag) and the path.
    pub fn read_file(path: &Path, key: &'static str) -> Result<Self, TokenFileError> {
        let read = |source| TokenFileError::Read {
            key,
            path: path.to_path_buf(),
            source,
        };
        let invalid = |rule| TokenFileError::Invalid {
            key,
            path: path.to_path_buf(),
            rule,
        };
        let mut bytes = Vec::new();
        std::fs::File::open(path)
            .and_then(|f| f.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes))
            .map_err(read)?;
        if bytes.len() as u64 > MAX_FILE_BYTES {
            return Err(invalid(TokenRule::TooLong));
        }
        let text = std::str::from_utf8(&bytes).map_err(|_| invalid(TokenRule::BadCharacter))?;
        Self::parse(text).map_err(invalid)
    }

    /// The token, for an `Authorization` header.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn digest(&self) -> [u8; 32] {
        sha256(self.0.as_bytes())
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Whether `a` and `b` are equal, in a time that does not depend on where they differ.
pub fn ct_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// Whether the `presented` credentials are the token whose digest is `expected`: the
/// comparison is of digests, so it takes the same time whatever the presented length.
pub fn token_matches(presented: &[u8], expected: &[u8; 32]) -> bool {
    ct_eq(&sha256(presented), expected)
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthFailure {
    #[error("this route changes state and needs `Authorization: Bearer <token>` (the token of admin.token_file)")]
    Missing,
    #[error("the Authorization header is not `Bearer <token>`")]
    NotBearer,
    #[error("the bearer token is wrong")]
    WrongToken,
}

impl AuthFailure {
    /// The `WWW-Authenticate` challenge of the 401 answer (RFC 6750 §3: no error code when
    /// the request had no credentials, `invalid_token` when they were wrong).
    pub fn challenge(self) -> &'static str {
        match self {
            AuthFailure::Missing => "Bearer",
            AuthFailure::NotBearer => "Bearer error=\"invalid_request\"",
            AuthFailure::WrongToken => "Bearer error=\"invalid_token\"",
        }
    }
}

/// Whether a method only reads (and so passes without a token).
pub fn is_safe_method(method: &axum::http::Method) -> bool {
    matches!(*method, axum::http::Method::GET | axum::http::Method::HEAD)
}

/// The decision for one request, given the digest of the token in force: a safe method passes;
/// anything else needs `Authorization: Bearer <token>` (the scheme is case-insensitive,
/// RFC 7235 §2.1) with the right token.
pub fn decide(
    method: &axum::http::Method,
    authorization: Option<&[u8]>,
    expected: &[u8; 32],
) -> Result<(), AuthFailure> {
    if is_safe_method(method) {
        return Ok(());
    }
    let header = authorization.ok_or(AuthFailure::Missing)?;
    let header = header.trim_ascii();
    let split = header
        .iter()
        .position(|b| *b == b' ')
        .ok_or(AuthFailure::NotBearer)?;
    let (scheme, credentials) = header.split_at(split);
    let credentials = credentials.trim_ascii();
    if !scheme.eq_ignore_ascii_case(b"bearer") || credentials.is_empty() {
        return Err(AuthFailure::NotBearer);
    }
    if token_matches(credentials, expected) {
        Ok(())
    } else {
        Err(AuthFailure::WrongToken)
    }
}

/// The token in force, where it came from, and the refusals so far.
pub struct AdminAuth {
    path: PathBuf,
    digest: Mutex<[u8; 32]>,
    refused: AtomicU64,
}

impl fmt::Debug for AdminAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminAuth")
            .field("path", &self.path)
            .field("refused", &self.refused())
            .finish_non_exhaustive()
    }
}

impl AdminAuth {
    /// Reads the token file at `path` (errors name [`TOKEN_FILE_KEY`] and the path).
    pub fn load(path: impl Into<PathBuf>) -> Result<Self, TokenFileError> {
        let path = path.into();
        let token = BearerToken::read_file(&path, TOKEN_FILE_KEY)?;
        Ok(Self {
            path,
            digest: Mutex::new(token.digest()),
            refused: AtomicU64::new(0),
        })
    }

    /// The token file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the file again; the new token is in force at once. Returns whether it changed.
    /// On an error the token in force stays.
    pub fn reload(&self) -> Result<bool, TokenFileError> {
        let new = BearerToken::read_file(&self.path, TOKEN_FILE_KEY)?.digest();
        let mut digest = lock(&self.digest);
        let changed = !ct_eq(&digest, &new);
        *digest = new;
        Ok(changed)
    }

    /// [`decide`] with the token in force; a refusal is counted.
    pub fn authorize(
        &self,
        method: &axum::http::Method,
        authorization: Option<&[u8]>,
    ) -> Result<(), AuthFailure> {
        let expected = *lock(&self.digest);
        let r = decide(method, authorization, &expected);
        if r.is_err() {
            self.refused.fetch_add(1, Ordering::Relaxed);
        }
        r
    }

    /// Requests refused so far.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Method;

    const GOOD: &str = "0123456789abcdef-token";

    fn file(text: &[u8]) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut f, text).unwrap();
        f
    }

    #[test]
    fn constant_time_compare_tells_equal_from_different_everywhere() {
        let a = sha256(b"one token");
        assert!(ct_eq(&a, &a.clone()));
        for i in 0..32 {
            for bit in [0x01, 0x80] {
                let mut b = a;
                b[i] ^= bit;
                assert!(!ct_eq(&a, &b), "byte {i} bit {bit:#x}");
            }
        }
        let d = sha256(GOOD.as_bytes());
        assert!(token_matches(GOOD.as_bytes(), &d));
        // A prefix, an extension, another length, nothing: all refused.
        for other in [
            &GOOD.as_bytes()[..GOOD.len() - 1],
            b"0123456789abcdef-token2",
            b"",
        ] {
            assert!(!token_matches(other, &d), "{other:?}");
        }
    }

    #[test]
    fn token_files_are_trimmed_and_checked() {
        let f = file(format!("  {GOOD}\n").as_bytes());
        let t = BearerToken::read_file(f.path(), TOKEN_FILE_KEY).unwrap();
        assert_eq!(t.as_str(), GOOD);
        assert!(!format!("{t:?}").contains(GOOD), "Debug redacts the token");

        let cases: [(&[u8], TokenRule); 5] = [
            (b"", TokenRule::Empty),
            (b" \n\t\n", TokenRule::Empty),
            (b"short-token\n", TokenRule::TooShort { len: 11 }),
            (b"0123456789 abcdef", TokenRule::BadCharacter),
            (b"0123456789abcdef\xff", TokenRule::BadCharacter),
        ];
        for (text, rule) in cases {
            let f = file(text);
            let e = BearerToken::read_file(f.path(), TOKEN_FILE_KEY).unwrap_err();
            assert!(
                matches!(&e, TokenFileError::Invalid { rule: r, key: TOKEN_FILE_KEY, path }
                    if *r == rule && path == f.path()),
                "{text:?}: {e:?}"
            );
            let msg = e.to_string();
            assert!(
                msg.starts_with(&format!("admin.token_file {}: ", f.path().display())),
                "{msg}"
            );
        }
        let f = file(&vec![b'a'; MAX_TOKEN_LEN + 1]);
        let e = BearerToken::read_file(f.path(), "--admin-token-file").unwrap_err();
        assert!(e.to_string().starts_with("--admin-token-file "), "{e}");
        assert!(matches!(
            e,
            TokenFileError::Invalid {
                rule: TokenRule::TooLong,
                ..
            }
        ));

        let missing = Path::new("/nonexistent/shoal/admin.token");
        let e = AdminAuth::load(missing).unwrap_err();
        assert!(matches!(e, TokenFileError::Read { .. }), "{e:?}");
        assert!(
            e.to_string()
                .starts_with("admin.token_file /nonexistent/shoal/admin.token: cannot read it"),
            "{e}"
        );
    }

    #[test]
    fn only_mutating_methods_need_the_token() {
        let d = sha256(GOOD.as_bytes());
        let bearer = format!("Bearer {GOOD}");
        assert_eq!(decide(&Method::GET, None, &d), Ok(()));
        assert_eq!(decide(&Method::HEAD, Some(b"junk"), &d), Ok(()));
        for m in [Method::POST, Method::DELETE, Method::PUT, Method::PATCH] {
            assert_eq!(decide(&m, None, &d), Err(AuthFailure::Missing));
            assert_eq!(decide(&m, Some(bearer.as_bytes()), &d), Ok(()));
        }
        let post = |h: &str| decide(&Method::POST, Some(h.as_bytes()), &d);
        assert_eq!(post(&format!("bearer   {GOOD} ")), Ok(()));
        assert_eq!(post(&format!("Basic {GOOD}")), Err(AuthFailure::NotBearer));
        assert_eq!(post("Bearer"), Err(AuthFailure::NotBearer));
        assert_eq!(post("Bearer "), Err(AuthFailure::NotBearer));
        assert_eq!(post(GOOD), Err(AuthFailure::NotBearer));
        assert_eq!(
            post("Bearer 0123456789abcdef-tokeN"),
            Err(AuthFailure::WrongToken)
        );
    }

    #[test]
    fn refusals_are_counted_and_a_reload_swaps_the_token() {
        let f = file(GOOD.as_bytes());
        let auth = AdminAuth::load(f.path()).unwrap();
        let ok = format!("Bearer {GOOD}");
        assert!(auth.authorize(&Method::POST, Some(ok.as_bytes())).is_ok());
        assert!(auth.authorize(&Method::POST, None).is_err());
        assert!(auth.authorize(&Method::GET, None).is_ok());
        assert_eq!(auth.refused(), 1);
        assert!(!auth.reload().unwrap(), "same file, same token");

        let new = "fedcba9876543210-rotated";
        std::fs::write(f.path(), new).unwrap();
        assert!(auth.reload().unwrap());
        assert!(auth.authorize(&Method::POST, Some(ok.as_bytes())).is_err());
        let ok = format!("Bearer {new}");
        assert!(auth.authorize(&Method::DELETE, Some(ok.as_bytes())).is_ok());

        // A broken file on reload: refused, the token in force stays.
        std::fs::write(f.path(), "short").unwrap();
        assert!(auth.reload().is_err());
        assert!(auth.authorize(&Method::DELETE, Some(ok.as_bytes())).is_ok());
        assert_eq!(auth.refused(), 2);
        assert!(!format!("{auth:?}").contains(new));
    }
}
