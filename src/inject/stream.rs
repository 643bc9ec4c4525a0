//! A YAML stream cut into its documents, each kept as written.
//!
//! `remora inject` rewrites only the workloads it injects; every other document (a Service, a
//! ConfigMap, a workload that opted out, a comment-only document) goes out byte for byte, comments
//! included. So the stream is cut at its `---` lines here, and each piece is parsed on its own. A
//! `---` at the start of a line always starts a document (YAML forbids it inside content), so the
//! cut is exact for the streams Kubernetes tools write; `%` directives are not supported.

use yaml_serde::Value;

/// One document of a stream, as written: from its `---` line (if it has one) to the next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Document<'a> {
    /// The whole text: the `---` line, the head and the rest.
    pub text: &'a str,
    /// The line of the stream (from 1) where `text` starts.
    pub first_line: usize,
    /// Bytes of `text` taken by its `---` line and that line's end; 0 when the document has none.
    marker: usize,
    /// Bytes of `text` after the `---` line that are blank or comment lines: the document's head,
    /// kept when the rest is rewritten.
    head: usize,
}

impl<'a> Document<'a> {
    /// Whether the document starts with a `---` line.
    pub fn has_marker(&self) -> bool {
        self.marker > 0
    }

    /// The blank and comment lines between the `---` line and the content.
    pub fn head(&self) -> &'a str {
        &self.text[self.marker..self.marker + self.head]
    }

    /// The document's value (`Null` for a document of comments only). The text is parsed behind as
    /// many newlines as lines come before it, so an error's line and column are the stream's.
    pub fn parse(&self) -> Result<Value, yaml_serde::Error> {
        let mut padded = String::with_capacity(self.first_line - 1 + self.text.len());
        padded.extend(std::iter::repeat_n('\n', self.first_line - 1));
        padded.push_str(self.text);
        yaml_serde::from_str(&padded)
    }
}

/// Whether `line` (without its end) is a document start marker: `---` alone or followed by a space.
fn is_marker(line: &str) -> bool {
    line.strip_prefix("---").is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t', '\r']))
}

fn is_head_line(line: &str) -> bool {
    let trimmed = line.trim_start();
    trimmed.is_empty() || trimmed.starts_with('#')
}

/// The documents of `input`, in order. Their texts put end to end are `input` again. A stream that
/// starts with `---` has an empty first piece, which is left out.
pub fn split(input: &str) -> Vec<Document<'_>> {
    let mut starts = Vec::new(); // (byte offset, line number) of each piece
    let mut offset = 0;
    for (number, line) in input.split_inclusive('\n').enumerate() {
        if offset == 0 || is_marker(line.trim_end_matches('\n')) {
            starts.push((offset, number + 1));
        }
        offset += line.len();
    }
    let mut documents = Vec::with_capacity(starts.len());
    for (index, &(start, first_line)) in starts.iter().enumerate() {
        let end = starts.get(index + 1).map_or(input.len(), |&(next, _)| next);
        let text = &input[start..end];
        if text.is_empty() {
            continue;
        }
        let mut lines = text.split_inclusive('\n').peekable();
        let marker = match lines.peek() {
            Some(line) if is_marker(line.trim_end_matches('\n')) => line.len(),
            _ => 0,
        };
        if marker > 0 {
            lines.next();
        }
        let head = lines.take_while(|line| is_head_line(line)).map(str::len).sum();
        documents.push(Document { text, first_line, marker, head });
    }
    documents
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(input: &str) -> Vec<&str> {
        split(input).iter().map(|document| document.text).collect()
    }

    #[test]
    fn the_pieces_put_together_are_the_input() {
        for input in [
            "",
            "a: 1\n",
            "---\na: 1\n",
            "a: 1\n---\nb: 2\n---\n",
            "# lead\n---\n# head\na: 1\n--- # note\nb: |\n  ---x\n  y\n",
            "a: 1\r\n---\r\nb: 2",
        ] {
            assert_eq!(texts(input).concat(), input, "{input:?}");
        }
    }

    #[test]
    fn documents_start_at_markers_only() {
        assert_eq!(texts("a: 1\n---\nb: 2\n"), ["a: 1\n", "---\nb: 2\n"]);
        assert_eq!(texts("---\na: 1\n"), ["---\na: 1\n"]);
        // `---x` and an indented `---` are content, not markers.
        assert_eq!(texts("a: |\n  ---\n---x: 1\n"), ["a: |\n  ---\n---x: 1\n"]);
        assert_eq!(texts("--- # c\na: 1\n---\t\nb: 2\n"), ["--- # c\na: 1\n", "---\t\nb: 2\n"]);
    }

    #[test]
    fn the_head_is_the_comment_and_blank_lines_after_the_marker() {
        let documents = split("# top\n\na: 1\n---\n  # one\n\n# two\nb: 2 # not head\n# tail\n");
        assert_eq!(documents[0].head(), "# top\n\n");
        assert!(!documents[0].has_marker());
        assert_eq!(documents[1].head(), "  # one\n\n# two\n");
        assert!(documents[1].has_marker());
    }

    #[test]
    fn parse_errors_have_the_streams_line_numbers() {
        let documents = split("a: 1\n---\nb: 2\nc: [\n");
        assert_eq!(documents[1].first_line, 2);
        let error = documents[1].parse().unwrap_err();
        let location = error.location().expect("a location");
        assert!(location.line() >= 4, "line {} of the stream", location.line());
        assert_eq!(documents[0].parse().unwrap(), yaml_serde::from_str::<Value>("a: 1").unwrap());
    }

    #[test]
    fn a_comment_only_document_is_null() {
        let documents = split("# nothing here\n---\n");
        assert_eq!(documents.len(), 2);
        assert!(documents.iter().all(|document| document.parse().unwrap().is_null()));
    }
}
