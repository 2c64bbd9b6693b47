//! Go's `path/filepath.Match`, which the kubelet's keyring matches host labels with.

/// Malformed glob, Go's `filepath.ErrBadPattern`.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct BadPattern;

/// Go's `path/filepath.Match` on Unix, byte for byte: `*` matches any run of non-`/` bytes, `?`
/// one character, `[...]` a class (`^` negates, `a-z` ranges), `\` escapes.
pub(super) fn go_match(mut pattern: &[u8], mut name: &[u8]) -> Result<bool, BadPattern> {
    'chunks: while !pattern.is_empty() {
        let (star, chunk, rest) = scan_chunk(pattern);
        pattern = rest;
        if star && chunk.is_empty() {
            return Ok(!name.contains(&b'/'));
        }
        if let Some(after) = match_chunk(chunk, name)? {
            // The last chunk must consume the whole name.
            if after.is_empty() || !pattern.is_empty() {
                name = after;
                continue;
            }
        }
        if star {
            let mut skip = 0;
            while skip < name.len() && name[skip] != b'/' {
                if let Some(after) = match_chunk(chunk, &name[skip + 1..])? {
                    if pattern.is_empty() && !after.is_empty() {
                        skip += 1;
                        continue;
                    }
                    name = after;
                    continue 'chunks;
                }
                skip += 1;
            }
        }
        // Go reports a malformed remainder even when the match has already failed.
        while !pattern.is_empty() {
            let (_, chunk, rest) = scan_chunk(pattern);
            pattern = rest;
            match_chunk(chunk, b"")?;
        }
        return Ok(false);
    }
    Ok(name.is_empty())
}

/// Go's `scanChunk`: leading stars, then everything up to the next star outside a class.
fn scan_chunk(mut pattern: &[u8]) -> (bool, &[u8], &[u8]) {
    let mut star = false;
    while let Some(rest) = pattern.strip_prefix(b"*") {
        pattern = rest;
        star = true;
    }
    let mut in_range = false;
    let mut i = 0;
    while i < pattern.len() {
        match pattern[i] {
            b'\\' if i + 1 < pattern.len() => i += 1,
            b'[' => in_range = true,
            b']' => in_range = false,
            b'*' if !in_range => break,
            _ => {}
        }
        i += 1;
    }
    (star, &pattern[..i], &pattern[i..])
}

/// Go's `matchChunk`: `Some(rest of name)` on a match. After a mismatch it keeps walking the
/// chunk so that a malformed pattern is still reported.
fn match_chunk<'n>(mut chunk: &[u8], mut name: &'n [u8]) -> Result<Option<&'n [u8]>, BadPattern> {
    let mut failed = false;
    while let Some(&c) = chunk.first() {
        if !failed && name.is_empty() {
            failed = true;
        }
        match c {
            b'[' => {
                let mut r = 0;
                if !failed {
                    let (rune, width) = decode_rune(name);
                    r = rune;
                    name = &name[width..];
                }
                chunk = &chunk[1..];
                let negated = chunk.first() == Some(&b'^');
                if negated {
                    chunk = &chunk[1..];
                }
                let mut matched = false;
                let mut ranges = 0;
                loop {
                    if ranges > 0 && chunk.first() == Some(&b']') {
                        chunk = &chunk[1..];
                        break;
                    }
                    let (lo, rest) = class_char(chunk)?;
                    chunk = rest;
                    let mut hi = lo;
                    if chunk.first() == Some(&b'-') {
                        (hi, chunk) = class_char(&chunk[1..])?;
                    }
                    if lo <= r && r <= hi {
                        matched = true;
                    }
                    ranges += 1;
                }
                if matched == negated {
                    failed = true;
                }
            }
            b'?' => {
                if !failed {
                    if name[0] == b'/' {
                        failed = true;
                    }
                    let (_, width) = decode_rune(name);
                    name = &name[width..];
                }
                chunk = &chunk[1..];
            }
            _ => {
                let mut literal = c;
                if c == b'\\' {
                    chunk = &chunk[1..];
                    literal = *chunk.first().ok_or(BadPattern)?;
                }
                if !failed {
                    if literal != name[0] {
                        failed = true;
                    }
                    name = &name[1..];
                }
                chunk = &chunk[1..];
            }
        }
    }
    Ok(if failed { None } else { Some(name) })
}

/// Go's `getEsc`: one possibly escaped character of a class, which must not end the pattern.
fn class_char(chunk: &[u8]) -> Result<(u32, &[u8]), BadPattern> {
    let mut chunk = match chunk.first() {
        None | Some(b'-' | b']') => return Err(BadPattern),
        Some(_) => chunk,
    };
    if chunk[0] == b'\\' {
        chunk = &chunk[1..];
        if chunk.is_empty() {
            return Err(BadPattern);
        }
    }
    let (rune, width) = decode_rune(chunk);
    if rune == u32::from(char::REPLACEMENT_CHARACTER) && width == 1 {
        return Err(BadPattern);
    }
    let rest = &chunk[width..];
    if rest.is_empty() {
        return Err(BadPattern);
    }
    Ok((rune, rest))
}

/// Go's `utf8.DecodeRune`: U+FFFD with width 1 for invalid input, width 0 for none.
fn decode_rune(bytes: &[u8]) -> (u32, usize) {
    const INVALID: (u32, usize) = (0xFFFD, 1);
    let width = match bytes.first() {
        None => return (0xFFFD, 0),
        Some(0x00..=0x7f) => 1,
        Some(0xc2..=0xdf) => 2,
        Some(0xe0..=0xef) => 3,
        Some(0xf0..=0xf4) => 4,
        Some(_) => return INVALID,
    };
    bytes
        .get(..width)
        .and_then(|b| std::str::from_utf8(b).ok())
        .and_then(|s| s.chars().next())
        .map_or(INVALID, |c| (u32::from(c), width))
}
