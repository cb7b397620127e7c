//! Scrubbing secret values out of what an action writes: its log entries (the `log` import,
//! its and its programs' output), its error, its summary and variables. A value is found as
//! written and in the forms a step might turn it into — base64 (standard and URL-safe, at each
//! of the three alignments a value can have inside a longer encoded text), hex (lower and
//! upper case) and URL-encoding — and replaced with `***`, also when a value arrives split
//! across entries or one byte at a time ([`Stream`] holds back only what could still be the
//! start of one).
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};

/// What replaces a secret.
pub const MASK: &str = "***";
/// Values shorter than this cannot be told apart from ordinary text; `secret put` refuses them.
pub const MIN_SECRET_BYTES: usize = 8;

/// The forms of a set of secret values.
#[derive(Clone, Debug, Default)]
pub struct Redactor {
    /// Longest first, so a match takes the most it can.
    forms: Vec<Vec<u8>>,
}

impl Redactor {
    /// A redactor for `values` and their encodings.
    pub fn new<'a>(values: impl IntoIterator<Item = &'a str>) -> Self {
        let mut forms: Vec<Vec<u8>> = Vec::new();
        for v in values {
            let b = v.as_bytes();
            if b.is_empty() {
                continue;
            }
            forms.push(b.to_vec());
            forms.push(hex(b, false).into_bytes());
            forms.push(hex(b, true).into_bytes());
            forms.push(url_encoded(b).into_bytes());
            for engine in [&STANDARD_NO_PAD, &URL_SAFE_NO_PAD] {
                for align in 0..3 {
                    if let Some(f) = base64_form(engine, b, align) {
                        forms.push(f.into_bytes());
                    }
                }
            }
        }
        // Encoded forms of very short values would match ordinary text.
        forms.retain(|f| f.len() >= 4);
        forms.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        forms.dedup();
        Redactor { forms }
    }

    /// Whether there is nothing to redact.
    pub fn is_empty(&self) -> bool {
        self.forms.is_empty()
    }

    /// `text` with every form replaced by [`MASK`].
    pub fn redact(&self, text: &str) -> String {
        if self.is_empty() {
            return text.to_string();
        }
        render(text.as_bytes(), &self.matches(text.as_bytes()))
    }

    /// Byte ranges of `hay` that are a form, leftmost-longest, not overlapping.
    fn matches(&self, hay: &[u8]) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < hay.len() {
            match self.forms.iter().find(|f| hay[i..].starts_with(f)) {
                Some(f) => {
                    out.push((i, i + f.len()));
                    i += f.len();
                }
                None => i += 1,
            }
        }
        out
    }

    /// The length of the longest suffix of `hay` that is a proper prefix of some form: what
    /// the next text could complete into a secret.
    fn open_suffix(&self, hay: &[u8]) -> usize {
        let longest = self.forms.first().map_or(0, |f| f.len());
        (1..longest.min(hay.len() + 1))
            .rev()
            .find(|&n| {
                let tail = &hay[hay.len() - n..];
                self.forms
                    .iter()
                    .any(|f| f.len() > n && f.starts_with(tail))
            })
            .unwrap_or(0)
    }
}

fn render(bytes: &[u8], masked: &[(usize, usize)]) -> String {
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    for &(s, e) in masked {
        if s < at {
            continue;
        }
        out.extend_from_slice(&bytes[at..s]);
        out.extend_from_slice(MASK.as_bytes());
        at = e;
    }
    out.extend_from_slice(&bytes[at..]);
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(b: &[u8], upper: bool) -> String {
    b.iter()
        .map(|x| {
            if upper {
                format!("{x:02X}")
            } else {
                format!("{x:02x}")
            }
        })
        .collect()
}

fn url_encoded(b: &[u8]) -> String {
    b.iter()
        .map(|&x| {
            if x.is_ascii_alphanumeric() || matches!(x, b'-' | b'_' | b'.' | b'~') {
                (x as char).to_string()
            } else {
                format!("%{x:02X}")
            }
        })
        .collect()
}

/// The part of the base64 of `value` that is the same wherever the value sits, when it starts
/// `align` bytes into a 3-byte group: the characters that depend on neither the bytes before
/// it nor the bytes after it.
fn base64_form(
    engine: &base64::engine::GeneralPurpose,
    value: &[u8],
    align: usize,
) -> Option<String> {
    let mut padded = vec![0u8; align];
    padded.extend_from_slice(value);
    let encoded = engine.encode(&padded);
    // Characters holding bits of the leading filler.
    let skip = (align * 8).div_ceil(6);
    // The last character is partial unless the value ends a group.
    let end = if padded.len().is_multiple_of(3) {
        encoded.len()
    } else {
        encoded.len() - 1
    };
    (end > skip).then(|| encoded[skip..end].to_string())
}

/// Entries redacted as a stream: an entry is released once nothing after it could complete
/// a secret that starts in it.
#[derive(Debug)]
pub struct Stream<T> {
    redactor: Redactor,
    held: Vec<Held<T>>,
}

#[derive(Debug)]
struct Held<T> {
    text: String,
    extra: T,
    /// Byte ranges of `text` to mask, kept across pushes (a match found while its first
    /// part was held is still masked after the rest arrived).
    masked: Vec<(usize, usize)>,
}

impl<T> Stream<T> {
    /// A stream redacting with `redactor`.
    pub fn new(redactor: Redactor) -> Self {
        Stream {
            redactor,
            held: Vec::new(),
        }
    }

    /// Add an entry; returns the entries now safe to write, redacted, in order.
    pub fn push(&mut self, text: String, extra: T) -> Vec<(String, T)> {
        if self.redactor.is_empty() {
            return vec![(text, extra)];
        }
        self.held.push(Held {
            text,
            extra,
            masked: Vec::new(),
        });
        let mut combined = Vec::new();
        let mut starts = Vec::new();
        for h in &self.held {
            starts.push(combined.len());
            combined.extend_from_slice(h.text.as_bytes());
        }
        for (s, e) in self.redactor.matches(&combined) {
            for (i, h) in self.held.iter_mut().enumerate() {
                let (hs, he) = (starts[i], starts[i] + h.text.len());
                let (a, b) = (s.max(hs), e.min(he));
                if a < b {
                    h.masked.push((a - hs, b - hs));
                }
            }
        }
        let keep_from = combined.len() - self.redactor.open_suffix(&combined);
        let release = self
            .held
            .iter()
            .enumerate()
            .take_while(|(i, h)| starts[*i] + h.text.len() <= keep_from)
            .count();
        self.held.drain(..release).map(Self::rendered).collect()
    }

    /// Every entry still held (the action ended), redacted.
    pub fn finish(&mut self) -> Vec<(String, T)> {
        self.held.drain(..).map(Self::rendered).collect()
    }

    fn rendered(mut h: Held<T>) -> (String, T) {
        h.masked.sort_unstable();
        h.masked.dedup();
        (render(h.text.as_bytes(), &h.masked), h.extra)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "hunter2-is-not/a+good=token";

    fn redactor() -> Redactor {
        Redactor::new([SECRET])
    }

    #[test]
    fn a_value_is_found_as_written_and_in_every_encoding() {
        let r = redactor();
        let b = SECRET.as_bytes();
        let mut written = vec![
            format!("token={SECRET};"),
            format!("hex {}", hex(b, false)),
            format!("HEX {}", hex(b, true)),
            format!("url {}", url_encoded(b)),
        ];
        for engine in [
            &base64::engine::general_purpose::STANDARD,
            &base64::engine::general_purpose::URL_SAFE,
        ] {
            for prefix in ["", "a", "ab"] {
                // Inside a longer encoded text, at each alignment.
                let text = format!("{prefix}{SECRET}!");
                written.push(format!("b64 {}", engine.encode(text.as_bytes())));
            }
        }
        for w in written {
            let out = r.redact(&w);
            assert!(out.contains(MASK), "not redacted: {w} → {out}");
            assert!(
                !out.contains(SECRET)
                    && !out.contains(&hex(b, false))
                    && !out.contains(&hex(b, true)),
                "{out}"
            );
        }
        assert_eq!(r.redact("nothing secret here"), "nothing secret here");
    }

    #[test]
    fn a_value_split_across_entries_or_written_byte_by_byte_is_masked() {
        let mut s = Stream::new(redactor());
        let mut out: Vec<String> = Vec::new();
        out.extend(
            s.push("before hunter2-is-".into(), ())
                .into_iter()
                .map(|e| e.0),
        );
        assert!(out.is_empty(), "held: it may be the start of a secret");
        out.extend(
            s.push("not/a+good=token after".into(), ())
                .into_iter()
                .map(|e| e.0),
        );
        assert_eq!(out, ["before ***", "*** after"]);

        let mut s = Stream::new(redactor());
        let mut all = String::new();
        for c in format!("x{SECRET}y").chars() {
            for (t, ()) in s.push(c.to_string(), ()) {
                all.push_str(&t);
            }
        }
        for (t, ()) in s.finish() {
            all.push_str(&t);
        }
        assert!(!all.contains("hunter2"), "{all}");
        assert!(all.starts_with('x') && all.ends_with('y'), "{all}");

        // Ordinary lines are not held.
        let mut s = Stream::new(redactor());
        assert_eq!(s.push("plain line".into(), 1).len(), 1);
    }
}
