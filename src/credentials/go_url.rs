//! The parts of Go's `net/url.Parse` and `net.SplitHostPort` the kubelet's keyring relies on,
//! ported rather than replaced by the `url` crate: WHATWG parsing lowercases, IDNA-maps and
//! re-encodes hosts and paths, which would change which keys match.

/// The parts of Go's `*url.URL` the kubelet uses, from `url.Parse` of an `http(s)://` URL.
pub(super) struct GoUrl {
    /// Unescaped, including any `:port` and IPv6 brackets, like Go's `URL.Host`.
    pub(super) host: String,
    /// Unescaped.
    pub(super) path: String,
}

impl GoUrl {
    /// Go's `url.Parse`, restricted to inputs that start with `http://` or `https://` (the only
    /// ones the kubelet hands it here).
    pub(super) fn parse(raw: &str) -> Result<Self, &'static str> {
        let (url, fragment) = raw.split_once('#').unwrap_or((raw, ""));
        if url.bytes().any(|b| b < 0x20 || b == 0x7f) {
            return Err("invalid control character in URL");
        }
        let rest = url
            .strip_prefix("https:")
            .or_else(|| url.strip_prefix("http:"))
            .ok_or("missing http(s) scheme")?;
        let rest = rest.split_once('?').map_or(rest, |(before, _)| before);
        let rest = rest.strip_prefix("//").ok_or("missing authority")?;
        let (authority, path) = rest.find('/').map_or((rest, ""), |at| rest.split_at(at));
        let host = parse_authority(authority)?;
        let path = utf8(unescape(path, Escape::Path)?)?;
        if !fragment.is_empty() {
            unescape(fragment, Escape::Fragment)?;
        }
        Ok(Self { host, path })
    }
}

/// Go's `parseAuthority`, keeping only the host: the userinfo is validated, then dropped.
fn parse_authority(authority: &str) -> Result<String, &'static str> {
    let host = match authority.rfind('@') {
        None => authority,
        Some(at) => {
            let userinfo = &authority[..at];
            let valid = userinfo
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-._:~!$&'()*+,;=%@".contains(c));
            if !valid {
                return Err("invalid userinfo");
            }
            unescape(userinfo, Escape::UserPassword)?;
            &authority[at + 1..]
        }
    };
    parse_host(host)
}

/// Go's `parseHost`.
fn parse_host(host: &str) -> Result<String, &'static str> {
    if host.starts_with('[') {
        let close = host.rfind(']').ok_or("missing ']' in host")?;
        if !valid_optional_port(&host[close + 1..]) {
            return Err("invalid port after host");
        }
        if let Some(zone) = host[..close].find("%25") {
            let mut out = unescape(&host[..zone], Escape::Host)?;
            out.extend(unescape(&host[zone..close], Escape::Zone)?);
            out.extend(unescape(&host[close..], Escape::Host)?);
            return utf8(out);
        }
    } else if let Some(colon) = host.rfind(':')
        && !valid_optional_port(&host[colon..])
    {
        return Err("invalid port after host");
    }
    utf8(unescape(host, Escape::Host)?)
}

fn valid_optional_port(port: &str) -> bool {
    match port.strip_prefix(':') {
        None => port.is_empty(),
        Some(digits) => digits.bytes().all(|b| b.is_ascii_digit()),
    }
}

// Go strings may hold any bytes after unescaping; a key whose escapes decode to invalid UTF-8 is
// treated as unparseable instead, which no normalised image reference could have matched anyway.
fn utf8(bytes: Vec<u8>) -> Result<String, &'static str> {
    String::from_utf8(bytes).map_err(|_| "escapes decode to invalid UTF-8")
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Escape {
    Host,
    Zone,
    UserPassword,
    Path,
    Fragment,
}

/// Go's `url.unescape`, with its per-component validation.
fn unescape(s: &str, mode: Escape) -> Result<Vec<u8>, &'static str> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b != b'%' {
            if matches!(mode, Escape::Host | Escape::Zone) && b < 0x80 && host_must_escape(b) {
                return Err("invalid character in host name");
            }
            out.push(b);
            i += 1;
            continue;
        }
        let (Some(hi), Some(lo)) = (
            bytes.get(i + 1).and_then(|&h| hex_value(h)),
            bytes.get(i + 2).and_then(|&l| hex_value(l)),
        ) else {
            return Err("invalid URL escape");
        };
        let is_escaped_percent = &bytes[i..i + 3] == b"%25";
        let value = (hi << 4) | lo;
        // RFC 3986 lets a host %-encode only non-ASCII bytes, RFC 6874 adds %25 for zones.
        if mode == Escape::Host && hi < 8 && !is_escaped_percent {
            return Err("invalid URL escape in host");
        }
        if mode == Escape::Zone && !is_escaped_percent && value != b' ' && host_must_escape(value) {
            return Err("invalid URL escape in zone");
        }
        out.push(value);
        i += 3;
    }
    Ok(out)
}

fn hex_value(b: u8) -> Option<u8> {
    char::from(b)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

/// Go's `shouldEscape(c, encodeHost)`: what a host may not contain unescaped.
fn host_must_escape(c: u8) -> bool {
    !(c.is_ascii_alphanumeric() || b"!$&'()*+,;=:[]<>\"-_.~".contains(&c))
}

/// Go's `net.SplitHostPort`; `None` where Go returns an error.
pub(super) fn split_host_port(hostport: &str) -> Option<(&str, &str)> {
    let colon = hostport.rfind(':')?;
    let (host, no_open_from, no_close_from) = if hostport.starts_with('[') {
        let close = hostport.find(']')?;
        // The first ']' must sit right before the last ':'.
        if close + 1 != colon {
            return None;
        }
        (&hostport[1..close], 1, close + 1)
    } else {
        let host = &hostport[..colon];
        if host.contains(':') {
            return None;
        }
        (host, 0, 0)
    };
    if hostport[no_open_from..].contains('[') || hostport[no_close_from..].contains(']') {
        return None;
    }
    Some((host, &hostport[colon + 1..]))
}
