//! What a registry said about a refusal: its distribution error envelope, or a short text
//! body. Kept because it is what tells a user what to do: "current image with 3
//! vulnerabilities cannot be pulled…".

use std::fmt;

use serde::Serialize;

/// What the registry said about a refusal, from its error body.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RegistryMessage {
    /// The distribution error code of the first error (`DENIED`, `PROJECTPOLICYVIOLATION`…).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// The registry's own words, shortened: each error as `CODE: message` (the code is what
    /// a user searches the registry's documentation for), or a plain-text body as it came.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Longest registry message kept; enough for Harbor's and Xray's explanations.
const MAX_MESSAGE: usize = 600;

#[derive(serde::Deserialize)]
struct Envelope {
    #[serde(default)]
    errors: Vec<EnvelopeError>,
}

#[derive(serde::Deserialize)]
struct EnvelopeError {
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

impl RegistryMessage {
    /// Reads an error body: the distribution envelope `{"errors":[{"code","message"}]}`, or
    /// a short plain-text body. HTML error pages say nothing useful and are dropped.
    pub fn from_body(body: &[u8]) -> Self {
        if let Ok(env) = serde_json::from_slice::<Envelope>(body)
            && !env.errors.is_empty()
        {
            let code = env.errors[0].code.as_deref().map(clean);
            let text = env
                .errors
                .iter()
                .take(4)
                .map(|e| match (&e.code, &e.message) {
                    (Some(c), Some(m)) if !m.is_empty() => format!("{c}: {m}"),
                    (Some(c), _) => c.clone(),
                    (None, Some(m)) => m.clone(),
                    (None, None) => String::new(),
                })
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
                .join("; ");
            return RegistryMessage {
                code,
                message: (!text.is_empty()).then(|| clean(&text)),
            };
        }
        let text = String::from_utf8_lossy(&body[..body.len().min(4 * MAX_MESSAGE)]);
        let text = text.trim();
        let looks_html = text.starts_with('<');
        RegistryMessage {
            code: None,
            message: (!text.is_empty() && !looks_html).then(|| clean(text)),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.code.is_none() && self.message.is_none()
    }
}

/// Makes registry text safe to put in a single-line message: no control characters, bounded.
fn clean(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_MESSAGE)
        .collect();
    if s.chars().count() > MAX_MESSAGE {
        out.push('…');
    }
    out
}

impl fmt::Display for RegistryMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.code, &self.message) {
            (_, Some(m)) => f.write_str(m),
            (Some(c), None) => f.write_str(c),
            (None, None) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn harbor_412() {
        let body = br#"{"errors":[{"code":"PROJECTPOLICYVIOLATION","message":"current image with 3 vulnerabilities cannot be pulled due to configured policy"}]}"#;
        let m = RegistryMessage::from_body(body);
        assert_eq!(m.code.as_deref(), Some("PROJECTPOLICYVIOLATION"));
        assert!(
            m.to_string()
                .starts_with("PROJECTPOLICYVIOLATION: current image with 3")
        );
    }

    #[test]
    fn plain_text_html_and_noise() {
        assert_eq!(
            RegistryMessage::from_body(b"  quota exceeded\n")
                .message
                .as_deref(),
            Some("quota exceeded")
        );
        assert!(RegistryMessage::from_body(b"<html><body>502</body></html>").is_empty());
        assert!(RegistryMessage::from_body(b"").is_empty());
        let long = "x\u{7}".repeat(5000);
        let m = RegistryMessage::from_body(long.as_bytes());
        let s = m.message.unwrap();
        assert!(s.chars().count() <= MAX_MESSAGE + 1 && !s.contains('\u{7}'));
    }
}
