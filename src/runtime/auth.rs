//! Bearer credentials: scoped API tokens (`NAME SCOPES TOKEN` lines) and intake keys, both
//! compared as SHA-256 digests in constant time.

use std::sync::Arc;

use axum::http::{HeaderMap, StatusCode, header};
use sha2::{Digest, Sha256};

use super::ops::ApiError;

/// What a token may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    /// Read profiles, timelines, explanations, the review queue and quarantine.
    Read,
    /// Merge, unmerge, decide reviews, replay quarantine.
    Write,
    /// Erase a person (GDPR).
    Erase,
}

impl Scope {
    fn parse(s: &str) -> Option<Scope> {
        match s {
            "read" => Some(Scope::Read),
            "write" => Some(Scope::Write),
            "erase" => Some(Scope::Erase),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Write => "write",
            Scope::Erase => "erase",
        }
    }
}

pub fn digest(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// Equal digests, compared in constant time so timing reveals nothing about a guess.
pub fn digest_matches(expected: &[u8; 32], presented: &str) -> bool {
    let got = digest(presented);
    expected.iter().zip(got.iter()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

/// The token of an `Authorization: Bearer ...` header.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers.get(header::AUTHORIZATION)?.to_str().ok()?.strip_prefix("Bearer ").map(str::trim)
}

/// One line of the tokens file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenLine {
    pub name: String,
    pub scopes: Vec<Scope>,
    pub token: String,
}

/// Parse `NAME SCOPES TOKEN` lines (scopes comma-separated); blank lines and `#` comments skipped.
pub fn parse_lines(text: &str) -> Result<Vec<TokenLine>, String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [name, scopes, token] = fields[..] else {
            return Err(format!("line {}: expected NAME SCOPES TOKEN", i + 1));
        };
        let scopes = scopes
            .split(',')
            .map(|s| Scope::parse(s).ok_or_else(|| format!("line {}: unknown scope {s:?} (read, write, erase)", i + 1)))
            .collect::<Result<Vec<_>, _>>()?;
        out.push(TokenLine { name: name.into(), scopes, token: token.into() });
    }
    Ok(out)
}

#[derive(Clone, Debug)]
struct Entry {
    name: String,
    scopes: Vec<Scope>,
    digest: [u8; 32],
}

/// The API's tokens; only digests are kept in memory.
#[derive(Clone, Debug)]
pub struct Tokens(Arc<Vec<Entry>>);

impl Tokens {
    pub fn parse(text: &str) -> Result<Tokens, String> {
        Ok(Self::from_lines(&parse_lines(text)?))
    }

    pub fn from_lines(lines: &[TokenLine]) -> Tokens {
        let entries = lines.iter().map(|l| Entry { name: l.name.clone(), scopes: l.scopes.clone(), digest: digest(&l.token) });
        Tokens(Arc::new(entries.collect()))
    }

    /// The caller's token name and scopes: 401 without a known token.
    pub fn identify(&self, headers: &HeaderMap) -> Result<(String, Vec<Scope>), ApiError> {
        let entry = self.entry(headers)?;
        Ok((entry.name.clone(), entry.scopes.clone()))
    }

    fn entry(&self, headers: &HeaderMap) -> Result<&Entry, ApiError> {
        let presented = bearer(headers).ok_or_else(ApiError::unauthorized)?;
        // check every entry, so timing does not depend on which one matched
        let found = self.0.iter().fold(None, |found, e| if digest_matches(&e.digest, presented) { Some(e) } else { found });
        found.ok_or_else(ApiError::unauthorized)
    }

    /// The caller's token name when it holds `scope`: 401 without a known token, 403 without the scope.
    pub fn authorize(&self, headers: &HeaderMap, scope: Scope) -> Result<String, ApiError> {
        let entry = self.entry(headers)?;
        if !entry.scopes.contains(&scope) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!("token {:?} lacks the {:?} scope", entry.name, scope.name()),
            ));
        }
        Ok(entry.name.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_authorizes_by_scope() {
        let tokens = Tokens::parse("# clients\ncrm read,write abc\n\ndpo read,write,erase xyz\n").unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, "Bearer abc".parse().unwrap());
        assert_eq!(tokens.authorize(&headers, Scope::Write).unwrap(), "crm");
        assert_eq!(tokens.authorize(&headers, Scope::Erase).unwrap_err().status, StatusCode::FORBIDDEN);
        assert_eq!(tokens.identify(&headers).unwrap(), ("crm".to_string(), vec![Scope::Read, Scope::Write]));
        headers.insert(header::AUTHORIZATION, "Bearer nope".parse().unwrap());
        assert_eq!(tokens.authorize(&headers, Scope::Read).unwrap_err().status, StatusCode::UNAUTHORIZED);
        assert_eq!(tokens.identify(&headers).unwrap_err().status, StatusCode::UNAUTHORIZED);
        assert!(Tokens::parse("x admin t").is_err());
        assert!(Tokens::parse("x read").is_err());
    }
}
