//! Parts of hand-written files that code makes (the README's configuration table, the table of
//! dead-letter reasons in docs/dead-letters.md): each sits between two marker lines, where a
//! generator replaces it and a test compares it with what the code makes now.

/// The two lines around a generated part of a file.
#[derive(Clone, Copy, Debug)]
pub struct Markers {
    pub begin: &'static str,
    pub end: &'static str,
}

impl Markers {
    /// Where the part is in `text`: from its first marker to the end of its last.
    fn span(&self, text: &str) -> Option<(usize, usize)> {
        let start = text.find(self.begin)?;
        let end = text[start..].find(self.end)? + start + self.end.len();
        Some((start, end))
    }

    /// The generated part of `text` (markers included, and the line end after them), if it has one.
    pub fn part<'a>(&self, text: &'a str) -> Option<&'a str> {
        let (start, end) = self.span(text)?;
        Some(&text[start..(end + 1).min(text.len())])
    }

    /// `text` with its part replaced by `made` (markers included); None when the markers are missing.
    pub fn splice(&self, text: &str, made: &str) -> Option<String> {
        let (start, end) = self.span(text)?;
        let end = end + text[end..].find('\n').map_or(text.len() - end, |n| n + 1);
        Some(format!("{}{made}{}", &text[..start], &text[end..]))
    }

    /// `body` between the markers, each on a line of its own.
    pub fn around(&self, body: &str) -> String {
        format!("{}\n{body}{}\n", self.begin, self.end)
    }
}
