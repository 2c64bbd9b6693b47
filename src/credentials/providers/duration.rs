//! Go's `time.ParseDuration`, which the kubelet reads `defaultCacheDuration` and a plugin's
//! `cacheDuration` with (through `metav1.Duration`): `10m`, `1h30m`, `1.5h`, `.5s`, `-5m`, `0`.
//! Ported rather than replaced by `humantime`, which takes spellings the kubelet refuses (`1d`,
//! `10min`, `1 h`): pullgate would then accept a config the kubelet does not start with.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserialize, Deserializer, Visitor};

/// A Go `time.Duration`: signed nanoseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct GoDuration(i64);

impl GoDuration {
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        parse(text).map(GoDuration)
    }

    pub(crate) fn is_negative(self) -> bool {
        self.0 < 0
    }

    /// The duration when positive; `None` when zero or negative (nothing to keep).
    pub(crate) fn positive(self) -> Option<Duration> {
        u64::try_from(self.0)
            .ok()
            .filter(|&nanos| nanos > 0)
            .map(Duration::from_nanos)
    }
}

const UNITS: &[(&str, u64)] = &[
    ("ns", 1),
    ("us", 1_000),
    ("\u{b5}s", 1_000),
    ("\u{3bc}s", 1_000),
    ("ms", 1_000_000),
    ("s", 1_000_000_000),
    ("m", 60_000_000_000),
    ("h", 3_600_000_000_000),
];

const LIMIT: u64 = 1 << 63;

fn parse(orig: &str) -> Result<i64, String> {
    let invalid = || format!("time: invalid duration {orig:?}");
    let mut s = orig;
    let mut negative = false;
    if let Some(rest) = s.strip_prefix('-') {
        negative = true;
        s = rest;
    } else if let Some(rest) = s.strip_prefix('+') {
        s = rest;
    }
    if s == "0" {
        return Ok(0);
    }
    if s.is_empty() {
        return Err(invalid());
    }
    let mut total: u64 = 0;
    while !s.is_empty() {
        if !s.starts_with(|c: char| c == '.' || c.is_ascii_digit()) {
            return Err(invalid());
        }
        let digits = s.len() - s.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        let (int_part, rest) = s.split_at(digits);
        let mut value = leading_int(int_part).ok_or_else(invalid)?;
        s = rest;
        let mut fraction = (0u64, 1f64);
        let mut has_fraction = false;
        if let Some(rest) = s.strip_prefix('.') {
            let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
            fraction = leading_fraction(&rest[..digits]);
            has_fraction = digits > 0;
            s = &rest[digits..];
        }
        if int_part.is_empty() && !has_fraction {
            return Err(invalid());
        }
        let unit_len = s
            .find(|c: char| c == '.' || c.is_ascii_digit())
            .unwrap_or(s.len());
        if unit_len == 0 {
            return Err(format!("time: missing unit in duration {orig:?}"));
        }
        let (unit, rest) = s.split_at(unit_len);
        s = rest;
        let &(_, scale) = UNITS
            .iter()
            .find(|(name, _)| *name == unit)
            .ok_or_else(|| format!("time: unknown unit {unit:?} in duration {orig:?}"))?;
        if value > LIMIT / scale {
            return Err(invalid());
        }
        value *= scale;
        let (f, f_scale) = fraction;
        if f > 0 {
            // Go computes the fraction in float64, truncating; so do we, for the same nanoseconds.
            let extra = (f as f64 * (scale as f64 / f_scale)) as u64;
            value += extra;
            if value > LIMIT {
                return Err(invalid());
            }
        }
        total += value;
        if total > LIMIT {
            return Err(invalid());
        }
    }
    if negative {
        // LIMIT itself is i64::MIN's magnitude, which only a negative duration may reach.
        return Ok(0i64.wrapping_sub_unsigned(total));
    }
    i64::try_from(total).map_err(|_| invalid())
}

/// Go's `leadingInt` on a run of digits: `None` past 2^63.
fn leading_int(digits: &str) -> Option<u64> {
    let mut x: u64 = 0;
    for b in digits.bytes() {
        if x > LIMIT / 10 {
            return None;
        }
        x = x * 10 + u64::from(b - b'0');
        if x > LIMIT {
            return None;
        }
    }
    Some(x)
}

/// Go's `leadingFraction`: stops gaining precision instead of failing on overflow.
fn leading_fraction(digits: &str) -> (u64, f64) {
    let (mut x, mut scale) = (0u64, 1f64);
    for b in digits.bytes() {
        if x > (LIMIT - 1) / 10 {
            break;
        }
        let y = x * 10 + u64::from(b - b'0');
        if y > LIMIT {
            break;
        }
        x = y;
        scale *= 10.0;
    }
    (x, scale)
}

/// `metav1.Duration` in JSON: a string only. A YAML `0` or `5` (a number) is refused, as the
/// kubelet refuses it.
impl<'de> Deserialize<'de> for GoDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DurationVisitor;
        impl Visitor<'_> for DurationVisitor {
            type Value = GoDuration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration string such as \"10m\" or \"1h30m\"")
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<GoDuration, E> {
                GoDuration::parse(text).map_err(E::custom)
            }
        }
        deserializer.deserialize_any(DurationVisitor)
    }
}

/// Go's `Duration.String`: `1h2m3.5s`, `-1m0s`, `1.5ms`, `0s`.
impl fmt::Display for GoDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nanos = self.0.unsigned_abs();
        let sign = if self.0 < 0 { "-" } else { "" };
        if nanos == 0 {
            return f.write_str("0s");
        }
        if nanos < 1_000_000_000 {
            let (unit, prec) = if nanos < 1_000 {
                ("ns", 0)
            } else if nanos < 1_000_000 {
                ("\u{b5}s", 3)
            } else {
                ("ms", 6)
            };
            return write!(f, "{sign}{}{unit}", with_fraction(nanos, prec));
        }
        let seconds = with_fraction(nanos % 60_000_000_000, 9);
        let minutes = nanos / 60_000_000_000;
        match (minutes / 60, minutes % 60) {
            (0, 0) => write!(f, "{sign}{seconds}s"),
            (0, m) => write!(f, "{sign}{m}m{seconds}s"),
            (h, m) => write!(f, "{sign}{h}h{m}m{seconds}s"),
        }
    }
}

/// `value / 10^prec` with its fraction, trailing zeros (and a bare point) left out.
fn with_fraction(value: u64, prec: u32) -> String {
    let scale = 10u64.pow(prec);
    let (whole, fraction) = (value / scale, value % scale);
    if fraction == 0 {
        return whole.to_string();
    }
    let digits = format!("{fraction:0width$}", width = prec as usize);
    format!("{whole}.{}", digits.trim_end_matches('0'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_go_reads() {
        let ok: &[(&str, i64)] = &[
            ("0", 0),
            ("-0", 0),
            ("+0", 0),
            ("10m", 600_000_000_000),
            ("1h30m", 5_400_000_000_000),
            ("1.5h", 5_400_000_000_000),
            (".5s", 500_000_000),
            ("5.s", 5_000_000_000),
            ("-1m", -60_000_000_000),
            ("+2s", 2_000_000_000),
            ("1\u{b5}s", 1_000),
            ("1\u{3bc}s", 1_000),
            ("3ns", 3),
            ("0s", 0),
            ("9223372036854775807ns", i64::MAX),
            ("-9223372036854775808ns", i64::MIN),
        ];
        for (text, nanos) in ok {
            assert_eq!(GoDuration::parse(text), Ok(GoDuration(*nanos)), "{text}");
        }
    }

    #[test]
    fn refuses_what_go_refuses() {
        for text in [
            "",
            "-",
            "10",
            "1.5",
            ".s",
            "-.s",
            "1d",
            "10 m",
            "1h-1m",
            "9223372036854775808ns",
            "3000000h",
            "1e3s",
            "m",
        ] {
            assert!(GoDuration::parse(text).is_err(), "{text:?} parsed");
        }
        assert_eq!(
            GoDuration::parse("10").unwrap_err(),
            r#"time: missing unit in duration "10""#
        );
        assert_eq!(
            GoDuration::parse("1d").unwrap_err(),
            r#"time: unknown unit "d" in duration "1d""#
        );
    }

    #[test]
    fn prints_as_go_prints() {
        for (nanos, text) in [
            (0, "0s"),
            (-60_000_000_000, "-1m0s"),
            (5_400_000_000_000, "1h30m0s"),
            (1_500_000, "1.5ms"),
            (1_000, "1\u{b5}s"),
            (3, "3ns"),
            (3_723_500_000_000, "1h2m3.5s"),
            (61_000_000_000, "1m1s"),
            (1_000_000_001, "1.000000001s"),
        ] {
            assert_eq!(GoDuration(nanos).to_string(), text);
        }
    }

    #[test]
    fn positive_is_none_for_zero_and_negative() {
        assert_eq!(GoDuration(0).positive(), None);
        assert_eq!(GoDuration(-5).positive(), None);
        assert_eq!(GoDuration(5).positive(), Some(Duration::from_nanos(5)));
    }
}
