//! README.md as data: the fenced code blocks after HTML comment markers, so tests can run or
//! compare what README shows instead of a copy that could drift from it. A test reads README
//! with `include_str!("../README.md")`, so a change to it rebuilds only the tests that use it.

/// One fenced code block: its info string (`sh`, `yaml`, ...) and its text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Block {
    pub lang: String,
    pub text: String,
}

/// The text between the line `<!-- {name}: begin -->` and the line `<!-- {name}: end -->`;
/// panics, naming the markers, unless each occurs exactly once and in that order.
pub fn section<'a>(doc: &'a str, name: &str) -> &'a str {
    let begin = format!("<!-- {name}: begin -->\n");
    let end = format!("<!-- {name}: end -->\n");
    for m in [&begin, &end] {
        assert_eq!(
            doc.matches(m.as_str()).count(),
            1,
            "README.md must hold the line {:?} exactly once",
            m.trim_end()
        );
    }
    let start = doc.find(&begin).unwrap() + begin.len();
    let stop = doc.find(&end).unwrap();
    assert!(
        start <= stop,
        "{begin:?} must come before {end:?} in README.md"
    );
    &doc[start..stop]
}

/// The text from the line `<!-- {name}` ... `-->` to the end of the document.
pub fn after_marker<'a>(doc: &'a str, name: &str) -> &'a str {
    let marker = format!("<!-- {name}");
    let mut found = doc
        .match_indices(&marker)
        .filter(|(i, _)| *i == 0 || doc.as_bytes()[i - 1] == b'\n');
    let (at, _) = found
        .next()
        .unwrap_or_else(|| panic!("README.md has no line starting with {marker:?}"));
    assert!(found.next().is_none(), "README.md has {marker:?} twice");
    let rest = &doc[at..];
    &rest[rest.find("-->").expect("the marker comment is closed") + 3..]
}

/// The fenced code blocks of `text` (fences of three backquotes at the start of a line), in
/// order. Panics on a fence that is not closed.
pub fn blocks(text: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let mut open: Option<Block> = None;
    for line in text.lines() {
        match (&mut open, line.strip_prefix("```")) {
            (None, Some(info)) => {
                open = Some(Block {
                    lang: info.trim().to_string(),
                    text: String::new(),
                })
            }
            (Some(_), Some(rest)) if rest.trim().is_empty() => out.push(open.take().unwrap()),
            (Some(b), _) => {
                b.text.push_str(line);
                b.text.push('\n');
            }
            (None, None) => {}
        }
    }
    assert!(open.is_none(), "a code block is not closed: {open:?}");
    out
}
