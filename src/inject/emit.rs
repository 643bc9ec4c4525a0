//! Writes an injected document back as YAML that Kubernetes reads as we mean it.
//!
//! `yaml_serde` quotes a string only when YAML 1.2 would read it as something else, but Kubernetes
//! tools read YAML 1.1 (`sigs.k8s.io/yaml` on go-yaml v2), where `yes`, `on`, `n` are booleans and
//! `1_000` or `1:20` are numbers: an env value `"yes"` written bare turns into `true` and the apply
//! fails. So this writer quotes every string that is not plainly a string under both, in the block
//! style `kubectl get -o yaml` prints (sequences at their key's indentation). It covers what a
//! Kubernetes object holds (mappings with scalar keys, sequences, scalars); anything else (tags,
//! collection keys) gives `None`, and the caller falls back to `yaml_serde`.

use std::fmt::Write as _;

use yaml_serde::{Mapping, Value};

/// The document as block-style YAML ending in a newline, or `None` for what this writer leaves to
/// `yaml_serde`.
pub fn document(value: &Value) -> Option<String> {
    let mut out = String::new();
    match value {
        Value::Mapping(mapping) if !mapping.is_empty() => mapping_at(&mut out, mapping, 0, false)?,
        Value::Sequence(items) if !items.is_empty() => sequence_at(&mut out, items, 0, false)?,
        other => {
            out.push_str(&inline(other, 0)?);
            out.push('\n');
        }
    }
    Some(out)
}

fn indent(out: &mut String, by: usize) {
    out.extend(std::iter::repeat_n(' ', by));
}

/// A mapping's entries at `by` spaces; with `continued`, the first entry goes on the current line
/// (after a sequence's `- `).
fn mapping_at(out: &mut String, mapping: &Mapping, by: usize, continued: bool) -> Option<()> {
    for (index, (key, value)) in mapping.iter().enumerate() {
        if index > 0 || !continued {
            indent(out, by);
        }
        out.push_str(&key_text(key)?);
        out.push(':');
        match value {
            Value::Mapping(inner) if !inner.is_empty() => {
                out.push('\n');
                mapping_at(out, inner, by + 2, false)?;
            }
            Value::Sequence(items) if !items.is_empty() => {
                out.push('\n');
                sequence_at(out, items, by, false)?;
            }
            scalar => {
                out.push(' ');
                out.push_str(&inline(scalar, by + 2)?);
                out.push('\n');
            }
        }
    }
    Some(())
}

fn sequence_at(out: &mut String, items: &[Value], by: usize, continued: bool) -> Option<()> {
    for (index, item) in items.iter().enumerate() {
        if index > 0 || !continued {
            indent(out, by);
        }
        out.push_str("- ");
        match item {
            Value::Mapping(inner) if !inner.is_empty() => mapping_at(out, inner, by + 2, true)?,
            Value::Sequence(inner) if !inner.is_empty() => sequence_at(out, inner, by + 2, true)?,
            scalar => {
                out.push_str(&inline(scalar, by + 2)?);
                out.push('\n');
            }
        }
    }
    Some(())
}

fn key_text(key: &Value) -> Option<String> {
    match key {
        Value::String(text) if !text.contains('\n') => Some(scalar_string(text)),
        Value::Bool(_) | Value::Number(_) => inline(key, 0),
        _ => None,
    }
}

/// A value that fits after `key: ` or `- `: a scalar, `{}` or `[]`. A multi-line string becomes a
/// literal block whose lines are indented by `by`.
fn inline(value: &Value, by: usize) -> Option<String> {
    match value {
        Value::Null => Some("null".to_owned()),
        Value::Bool(flag) => Some(flag.to_string()),
        Value::Number(_) => Some(yaml_serde::to_string(value).ok()?.trim_end().to_owned()),
        Value::String(text) if text.contains('\n') => {
            Some(literal(text, by).unwrap_or_else(|| double_quoted(text)))
        }
        Value::String(text) => Some(scalar_string(text)),
        Value::Mapping(mapping) if mapping.is_empty() => Some("{}".to_owned()),
        Value::Sequence(items) if items.is_empty() => Some("[]".to_owned()),
        Value::Mapping(_) | Value::Sequence(_) | Value::Tagged(_) => None,
    }
}

/// `|`, `|-` or `|+` and the lines, when the text can be a literal block: no control characters
/// but newlines, no leading space or tab on the first line (which would need an indentation
/// indicator), and some text before the trailing newlines.
fn literal(text: &str, by: usize) -> Option<String> {
    let body = text.trim_end_matches('\n');
    let trailing = text.len() - body.len();
    if body.is_empty() || body.starts_with([' ', '\t']) || text.chars().any(|c| c.is_control() && c != '\n') {
        return None;
    }
    let mut out = String::from(match trailing {
        0 => "|-",
        1 => "|",
        _ => "|+",
    });
    for line in text.split('\n').take(body.split('\n').count() + trailing.saturating_sub(1)) {
        out.push('\n');
        if !line.is_empty() {
            indent(&mut out, by);
            out.push_str(line);
        }
    }
    Some(out)
}

/// Words that YAML 1.1 (booleans, null) or 1.2 (null) read as something else than a string.
const RESERVED: &[&str] = &[
    "y", "Y", "yes", "Yes", "YES", "n", "N", "no", "No", "NO", "true", "True", "TRUE", "false", "False",
    "FALSE", "on", "On", "ON", "off", "Off", "OFF", "null", "Null", "NULL", "~", "<<", "=",
];

/// Whether `text` reads back as this very string, written bare, in YAML 1.1 and 1.2 alike. On the
/// safe side: anything that starts like a number is quoted (`1.4.2` too), as is anything with a
/// character that could start a comment, a flow or an alias.
fn plain(text: &str) -> bool {
    let Some(first) = text.chars().next() else {
        return false;
    };
    let numeric = |c: char| c.is_ascii_hexdigit() || "xXoObB_.:+-,".contains(c);
    let starts_like_a_number = first.is_ascii_digit()
        || (matches!(first, '-' | '+' | '.') && text.chars().nth(1).is_some_and(|c| c.is_ascii_digit()));
    if starts_like_a_number && text.chars().all(numeric) {
        return false;
    }
    let lower = text.to_ascii_lowercase();
    if RESERVED.contains(&text)
        || [".inf", "-.inf", "+.inf", ".nan"].contains(&lower.as_str())
        || text.starts_with("...")
    {
        return false;
    }
    // `-x` and `--flag` are plain (a `-` is an indicator only before a space); `---` is not.
    let flag = text.trim_start_matches('-');
    let is_flag = text.len() - flag.len() <= 2 && flag.starts_with(|c: char| c.is_alphanumeric());
    if !(first.is_alphanumeric()
        || is_flag
        || matches!(first, '_' | '/' | '.' | '$' | '(' | '=' | '<' | '^' | '~'))
    {
        return false;
    }
    if text.ends_with([' ', ':'])
        || text.contains(": ")
        || text.contains(" #")
        || text.contains(['\t', '\u{feff}'])
    {
        return false;
    }
    !text.chars().any(|c| c.is_control())
}

fn scalar_string(text: &str) -> String {
    if plain(text) {
        text.to_owned()
    } else if text.chars().any(|c| c.is_control() || c == '\u{feff}') {
        double_quoted(text)
    } else {
        format!("'{}'", text.replace('\'', "''"))
    }
}

fn double_quoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() || c == '\u{feff}' => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(value: &Value) -> String {
        let text = document(value).expect("a document this writer handles");
        let back: Value = yaml_serde::from_str(&text).unwrap_or_else(|error| panic!("{error}:\n{text}"));
        assert_eq!(&back, value, "read back differently:\n{text}");
        text
    }

    #[test]
    fn strings_yaml_1_1_reads_otherwise_are_quoted() {
        for text in [
            "yes",
            "No",
            "on",
            "OFF",
            "y",
            "n",
            "~",
            "null",
            "",
            " lead",
            "trail ",
            "1:20",
            "1_000",
            "0755",
            "0x1F",
            "1e3",
            "1.4.2",
            "22,5432",
            "---",
            "---x",
            "...",
            "- x",
            "-",
            "-1",
            "-.5x",
            "2001-12-14",
            ".inf",
            "-.5",
            "<<",
            "a: b",
            "a #b",
            "- x",
            "#x",
            "*x",
            "&x",
            "!x",
            "@x",
            "`x",
            "'x",
            "\"x",
            "{x",
            "[x",
            "%x",
            "?x",
            "|x",
            ">x",
            "x:",
            "tab\there",
            "bell\u{7}",
        ] {
            assert!(!plain(text), "{text:?} must be quoted");
            let value = yaml_serde::from_str::<Value>(&format!("k: {}", scalar_string(text))).unwrap();
            assert_eq!(
                value["k"],
                Value::String(text.to_owned()),
                "{text:?} written {}",
                scalar_string(text)
            );
        }
        for text in [
            "--config",
            "-v",
            "web",
            "50m",
            "32Mi",
            "ghcr.io/remora-mesh/remora:0.1.0",
            "0 3 * * *",
            "/etc/remora",
            "NET_ADMIN",
            "a b",
            "é",
        ] {
            assert!(plain(text), "{text:?} can stay bare");
        }
    }

    #[test]
    fn documents_read_back_as_they_were() {
        let value: Value = yaml_serde::from_str(
            r#"
kind: Deployment
empty_map: {}
empty_list: []
nothing: null
flags: [true, false]
numbers: [1, -2, 3.5, 1e300]
spec:
  containers:
  - name: web
    env:
    - {name: A, value: "yes"}
    - {name: B, value: "line one\nline two\n"}
    - {name: C, value: "no newline\nat end"}
    - {name: D, value: "blank lines\n\n\nkept\n\n"}
    - {name: E, value: "  indented\nfirst line\n"}
    - {name: F, value: "tab\tand\nnewline"}
    args: [[nested, list], [], {}]
  "yes": quoted key
  1: number key
"#,
        )
        .unwrap();
        let text = round_trip(&value);
        assert!(text.contains("- name: web\n"), "{text}");
        assert!(text.contains("value: 'yes'"), "{text}");
        assert!(text.contains("value: |\n        line one\n        line two\n"), "{text}");
    }

    #[test]
    fn what_it_does_not_handle_is_left_to_yaml_serde() {
        let tagged: Value = yaml_serde::from_str("a: !custom x").unwrap();
        assert_eq!(document(&tagged), None);
        let complex_key: Value = yaml_serde::from_str("? [a, b]\n: c").unwrap();
        assert_eq!(document(&complex_key), None);
    }
}
