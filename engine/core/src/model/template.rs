//! `#{NAMESPACE.KEY}` references inside configuration strings.

/// One `#{...}` reference found in a string.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reference {
    /// `variables`, `sluice`, or an action's namespace.
    pub namespace: String,
    /// The key inside the namespace.
    pub key: String,
    /// Byte offset of `#{` in the string.
    pub offset: usize,
}

/// Find every reference in `text`, or say what is malformed.
pub fn references(text: &str) -> Result<Vec<Reference>, String> {
    let mut out = Vec::new();
    let mut rest = 0;
    while let Some(start) = text[rest..].find("#{").map(|i| i + rest) {
        let Some(end) = text[start..].find('}').map(|i| i + start) else {
            return Err(format!("unclosed `#{{` in {text:?}"));
        };
        let inner = text[start + 2..end].trim();
        match inner.split_once('.') {
            Some((ns, key)) if !ns.is_empty() && !key.is_empty() => out.push(Reference {
                namespace: ns.to_string(),
                key: key.to_string(),
                offset: start,
            }),
            _ => {
                return Err(format!(
                    "`#{{{inner}}}` is not of the form #{{NAMESPACE.KEY}}"
                ));
            }
        }
        rest = end + 1;
    }
    Ok(out)
}

/// Substitute every reference using `lookup`; an unresolved reference is an error naming it.
pub fn render(text: &str, lookup: impl Fn(&str, &str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = 0;
    while let Some(start) = text[rest..].find("#{").map(|i| i + rest) {
        out.push_str(&text[rest..start]);
        let end = text[start..]
            .find('}')
            .map(|i| i + start)
            .ok_or_else(|| format!("unclosed `#{{` in {text:?}"))?;
        let inner = text[start + 2..end].trim();
        let (ns, key) = inner
            .split_once('.')
            .ok_or_else(|| format!("`#{{{inner}}}` is not of the form #{{NAMESPACE.KEY}}"))?;
        let value = lookup(ns, key).ok_or_else(|| format!("`#{{{inner}}}` has no value"))?;
        out.push_str(&value);
        rest = end + 1;
    }
    out.push_str(&text[rest..]);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_and_renders_references() {
        let refs = references("deploy #{Build.Version} to #{ variables.target }").unwrap();
        assert_eq!(refs.len(), 2);
        assert_eq!(
            (refs[1].namespace.as_str(), refs[1].key.as_str()),
            ("variables", "target")
        );
        let out = render("v#{Build.Version}-#{sluice.pipeline}", |ns, k| {
            Some(format!("{ns}:{k}"))
        })
        .unwrap();
        assert_eq!(out, "vBuild:Version-sluice:pipeline");
        assert!(references("broken #{oops").is_err());
        assert!(references("#{nodot}").is_err());
        assert!(
            render("#{a.b}", |_, _| None)
                .unwrap_err()
                .contains("#{a.b}")
        );
    }
}
