//! `WWW-Authenticate` challenges (RFC 9110 §11.6.1), as registries send them on any 401:
//! `Bearer realm="…",service="…",scope="…"` or `Basic realm="…"`. Other schemes are skipped,
//! so a `Negotiate` offered before `Basic` does not hide the usable one.

use std::collections::HashMap;

#[derive(Clone, PartialEq, Eq, Hash)]
pub enum Challenge {
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
        error: Option<String>,
    },
    Basic,
}

impl Challenge {
    /// Roughly the bytes it holds, for caches bounded by size.
    pub fn weight(&self) -> usize {
        let text = |s: &Option<String>| s.as_ref().map_or(0, String::len);
        match self {
            Challenge::Bearer {
                realm,
                service,
                scope,
                error,
            } => 128 + realm.len() + text(service) + text(scope) + text(error),
            Challenge::Basic => 64,
        }
    }
}

impl std::fmt::Debug for Challenge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Challenge::Bearer { realm, service, .. } => f
                .debug_struct("Bearer")
                .field("realm", realm)
                .field("service", service)
                .finish(),
            Challenge::Basic => f.write_str("Basic"),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChallengeError {
    #[error("Bearer challenge has no realm")]
    MissingRealm,
    #[error("no supported auth scheme (Bearer or Basic) in WWW-Authenticate: {0:?}")]
    Unsupported(String),
}

/// Longest header value we look at; real challenges are a few hundred bytes.
const MAX_HEADER: usize = 8 * 1024;

/// Picks the challenge to answer from all `WWW-Authenticate` values of a response: the first
/// Bearer, else the first Basic.
pub fn select<'a>(values: impl IntoIterator<Item = &'a str>) -> Result<Challenge, ChallengeError> {
    let mut seen = String::new();
    let mut basic = false;
    let mut bearer_without_realm = false;
    for value in values {
        let value = truncate(value, MAX_HEADER);
        if seen.len() < 200 {
            seen.push_str(truncate(value, 200 - seen.len()));
        }
        for (scheme, params) in parse(value) {
            if scheme.eq_ignore_ascii_case("bearer") {
                match params.get("realm") {
                    Some(realm) if !realm.is_empty() => {
                        return Ok(Challenge::Bearer {
                            realm: realm.clone(),
                            service: params.get("service").filter(|s| !s.is_empty()).cloned(),
                            scope: params.get("scope").cloned(),
                            error: params.get("error").cloned(),
                        });
                    }
                    _ => bearer_without_realm = true,
                }
            } else if scheme.eq_ignore_ascii_case("basic") {
                basic = true;
            }
        }
    }
    if basic {
        Ok(Challenge::Basic)
    } else if bearer_without_realm {
        Err(ChallengeError::MissingRealm)
    } else {
        Err(ChallengeError::Unsupported(seen))
    }
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Splits one header value into `(scheme, params)` pairs. A token not followed by `=` starts a
/// new challenge; parameter names are lowercased.
fn parse(value: &str) -> Vec<(String, HashMap<String, String>)> {
    let mut out: Vec<(String, HashMap<String, String>)> = Vec::new();
    let mut p = Parser {
        s: value.as_bytes(),
        i: 0,
    };
    loop {
        p.skip_separators();
        let Some(token) = p.token() else {
            // Unparseable rest (e.g. token68 padding): skip one byte and go on.
            if p.i >= p.s.len() {
                break;
            }
            p.i += 1;
            continue;
        };
        p.skip_ws();
        if p.peek() == Some(b'=') && !out.is_empty() {
            p.i += 1;
            p.skip_ws();
            let v = if p.peek() == Some(b'"') {
                p.quoted()
            } else {
                p.token().unwrap_or_default()
            };
            if let Some((_, params)) = out.last_mut() {
                params.entry(token.to_ascii_lowercase()).or_insert(v);
            }
        } else {
            out.push((token, HashMap::new()));
        }
    }
    out
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.i += 1;
        }
    }

    fn skip_separators(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b',')) {
            self.i += 1;
        }
    }

    fn token(&mut self) -> Option<String> {
        let start = self.i;
        while let Some(c) = self.peek() {
            let tchar = c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~/:".contains(&c);
            if !tchar {
                break;
            }
            self.i += 1;
        }
        (self.i > start).then(|| String::from_utf8_lossy(&self.s[start..self.i]).into_owned())
    }

    fn quoted(&mut self) -> String {
        self.i += 1;
        let mut v = Vec::new();
        while let Some(c) = self.peek() {
            self.i += 1;
            match c {
                b'"' => break,
                b'\\' => {
                    if let Some(n) = self.peek() {
                        v.push(n);
                        self.i += 1;
                    }
                }
                _ => v.push(c),
            }
        }
        String::from_utf8_lossy(&v).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bearer(realm: &str, service: Option<&str>, scope: Option<&str>) -> Challenge {
        Challenge::Bearer {
            realm: realm.into(),
            service: service.map(Into::into),
            scope: scope.map(Into::into),
            error: None,
        }
    }

    #[test]
    fn docker_hub_bearer() {
        let c = select([
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/nginx:pull""#,
        ])
        .unwrap();
        assert_eq!(
            c,
            bearer(
                "https://auth.docker.io/token",
                Some("registry.docker.io"),
                Some("repository:library/nginx:pull")
            )
        );
    }

    #[test]
    fn error_param_and_spaces() {
        let c = select([
            r#"Bearer  realm = "https://r/t" , service="s", scope="repository:a:pull", error="insufficient_scope""#,
        ])
        .unwrap();
        let Challenge::Bearer { error, .. } = c else {
            panic!()
        };
        assert_eq!(error.as_deref(), Some("insufficient_scope"));
    }

    #[test]
    fn basic_and_scheme_case() {
        assert_eq!(
            select([r#"basic realm="Registry Realm""#]).unwrap(),
            Challenge::Basic
        );
    }

    #[test]
    fn negotiate_before_basic_in_separate_headers() {
        assert_eq!(
            select(["Negotiate", r#"Basic realm="x""#]).unwrap(),
            Challenge::Basic
        );
    }

    #[test]
    fn several_challenges_in_one_header_bearer_preferred() {
        let c =
            select([r#"Basic realm="a", Bearer realm="https://t/token",service="svc""#]).unwrap();
        assert_eq!(c, bearer("https://t/token", Some("svc"), None));
    }

    #[test]
    fn quoted_escapes_and_commas() {
        let c = select([r#"Bearer realm="https://t/tok\"en,x",service="a,b""#]).unwrap();
        assert_eq!(c, bearer("https://t/tok\"en,x", Some("a,b"), None));
    }

    #[test]
    fn empty_service_is_omitted() {
        let c = select([r#"Bearer realm="https://t",service="""#]).unwrap();
        assert_eq!(c, bearer("https://t", None, None));
    }

    #[test]
    fn missing_realm_and_unsupported() {
        assert_eq!(
            select([r#"Bearer service="x""#]),
            Err(ChallengeError::MissingRealm)
        );
        assert!(matches!(
            select(["Negotiate abc=="]),
            Err(ChallengeError::Unsupported(_))
        ));
        assert!(matches!(select([""]), Err(ChallengeError::Unsupported(_))));
    }

    #[test]
    fn garbage_does_not_panic() {
        for s in [
            "\"",
            "=",
            "Bearer realm=\"",
            "Bearer ,,,==\"\\",
            "\u{0}\u{ff}",
            "Bearer realm",
        ] {
            let _ = select([s]);
        }
        let long = "Bearer realm=\"".to_owned() + &"x".repeat(100_000);
        let _ = select([long.as_str()]);
    }
}
