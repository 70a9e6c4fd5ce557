//! NDJSON and JSON-array bodies read by hand, byte by byte, into the column builders.
//! serde's visitor per value cost more than the reading itself: the visitor, a
//! deserializer per line and a dynamic value per cell were about a third of an NDJSON
//! row's server time. The grammar is JSON's (RFC 8259) and what serde_json refuses is
//! refused here too (`fuzz/`'s `decode_ndjson` and `decode_json` compare the two);
//! serde_json still reads the rare parts: strings with escapes, nested objects and arrays.

use std::borrow::Cow;

use super::{Cell, DecodeError, RowsBuilder};

/// Where the body stops being JSON (a byte offset into the text read).
struct Bad(usize);

/// Reads one row object per line. Blank lines are skipped and are not rows: rows are
/// numbered as in the other formats, lines only name where a body is malformed.
pub(super) fn ndjson(rows: &mut RowsBuilder<'_, '_>, text: &str) -> Result<(), DecodeError> {
    let mut p = Reader::<true> { s: text, i: 0 };
    while p.i < text.len() {
        p.line(rows).map_err(|Bad(at)| malformed(text, at))?;
        if let Some(e) = rows.stop.take() {
            return Err(e);
        }
    }
    Ok(())
}

/// Reads one array of row objects. Past a limit the rest is not read: the limit is the
/// answer, not the JSON after it.
pub(super) fn array(rows: &mut RowsBuilder<'_, '_>, text: &str) -> Result<(), DecodeError> {
    let mut p = Reader::<false> { s: text, i: 0 };
    let read = p.rows(rows);
    if let Some(e) = rows.stop.take() {
        return Err(e);
    }
    read.map_err(|Bad(at)| malformed(text, at))
}

/// Names the line and column, never the text there.
fn malformed(text: &str, at: usize) -> DecodeError {
    let before = &text.as_bytes()[..at.min(text.len())];
    let line = before.iter().filter(|b| **b == b'\n').count() + 1;
    let column = before.len() - before.iter().rposition(|b| *b == b'\n').map_or(0, |n| n + 1) + 1;
    DecodeError::Malformed(format!("line {line}: malformed JSON at column {column}"))
}

/// Reads JSON text from byte `i` on; in NDJSON (`LINE`) whitespace stops at a line's end.
struct Reader<'a, const LINE: bool> {
    s: &'a str,
    i: usize,
}

impl<'a, const LINE: bool> Reader<'a, LINE> {
    fn peek(&self) -> Option<u8> {
        self.s.as_bytes().get(self.i).copied()
    }

    fn ws(&mut self) {
        while let Some(c @ (b' ' | b'\t' | b'\n' | b'\r')) = self.peek() {
            if LINE && c == b'\n' {
                return;
            }
            self.i += 1;
        }
    }

    /// One line of NDJSON and its end: a row, or only whitespace (`str::trim`'s ASCII
    /// kind, form feeds too).
    fn line(&mut self, rows: &mut RowsBuilder<'_, '_>) -> Result<(), Bad> {
        self.ws();
        if self.peek() == Some(b'{') {
            self.row(rows, rows.rows + 1)?;
            self.ws();
        } else {
            let rest = &self.s.as_bytes()[self.i..];
            let end = memchr::memchr(b'\n', rest).unwrap_or(rest.len());
            match rest[..end].iter().position(|b| !b.is_ascii_whitespace()) {
                Some(n) => return Err(Bad(self.i + n)),
                None => self.i += end,
            }
        }
        match self.peek() {
            None => Ok(()),
            Some(b'\n') => {
                self.i += 1;
                Ok(())
            }
            _ => Err(Bad(self.i)),
        }
    }

    fn eat(&mut self, c: u8) -> Result<(), Bad> {
        if self.peek() == Some(c) {
            self.i += 1;
            Ok(())
        } else {
            Err(Bad(self.i))
        }
    }

    /// `[ row, row, ... ]` and nothing after it but whitespace.
    fn rows(&mut self, rows: &mut RowsBuilder<'_, '_>) -> Result<(), Bad> {
        self.ws();
        self.eat(b'[')?;
        self.ws();
        if self.peek() == Some(b']') {
            self.i += 1;
        } else {
            for row in 1.. {
                self.row(rows, row)?;
                if rows.stop.is_some() {
                    return Ok(());
                }
                if !self.more(b']')? {
                    break;
                }
            }
        }
        self.ws();
        if self.i == self.s.len() { Ok(()) } else { Err(Bad(self.i)) }
    }

    /// After an array's element or an object's member: `true` at a comma (another
    /// follows), `false` at `close`.
    fn more(&mut self, close: u8) -> Result<bool, Bad> {
        self.ws();
        match self.peek() {
            Some(b',') => {
                self.i += 1;
                self.ws();
                Ok(true)
            }
            Some(c) if c == close => {
                self.i += 1;
                Ok(false)
            }
            _ => Err(Bad(self.i)),
        }
    }

    /// One row object, each value appended to its column as it is read.
    fn row(&mut self, rows: &mut RowsBuilder<'_, '_>, row: usize) -> Result<(), Bad> {
        self.eat(b'{')?;
        self.ws();
        if self.peek() == Some(b'}') {
            self.i += 1;
        } else {
            loop {
                if self.peek() != Some(b'"') {
                    return Err(Bad(self.i));
                }
                // Rows name their fields in the same order: the name of the row before is
                // compared in place (a field's name needs no escapes), else read and looked up.
                let b = &self.s.as_bytes()[self.i + 1..];
                let column = match rows.predicted() {
                    Some(name) if b.starts_with(name.as_bytes()) && b.get(name.len()) == Some(&b'"') => {
                        self.i += name.len() + 2;
                        rows.column_of_predicted(row)
                    }
                    _ => {
                        let key = self.string()?;
                        rows.column_of(row, &key)
                    }
                };
                self.ws();
                self.eat(b':')?;
                self.ws();
                let cell = self.value()?;
                if let Some(i) = column {
                    rows.put(row, i, cell);
                }
                if !self.more(b'}')? {
                    break;
                }
            }
        }
        rows.end_row();
        Ok(())
    }

    fn value(&mut self) -> Result<Cell<'a>, Bad> {
        match self.peek() {
            Some(b'"') => self.string().map(Cell::S),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(b't') => self.literal("true", Cell::B(true)),
            Some(b'f') => self.literal("false", Cell::B(false)),
            Some(b'n') => self.literal("null", Cell::Null),
            Some(b'{' | b'[') => {
                let mut values = serde_json::Deserializer::from_str(&self.s[self.i..]).into_iter::<serde_json::Value>();
                match values.next() {
                    Some(Ok(v)) => {
                        let end = self.i + values.byte_offset();
                        if LINE && self.s.as_bytes()[self.i..end].contains(&b'\n') {
                            return Err(Bad(self.i));
                        }
                        self.i = end;
                        Ok(Cell::Nested(Box::new(v)))
                    }
                    _ => Err(Bad(self.i)),
                }
            }
            _ => Err(Bad(self.i)),
        }
    }

    fn literal(&mut self, word: &str, cell: Cell<'a>) -> Result<Cell<'a>, Bad> {
        if self.s.as_bytes()[self.i..].starts_with(word.as_bytes()) {
            self.i += word.len();
            Ok(cell)
        } else {
            Err(Bad(self.i))
        }
    }

    /// A string, at its opening quote: borrowed from the body unless it holds escapes,
    /// which serde_json then reads (they are rare in machine-written rows).
    fn string(&mut self) -> Result<Cow<'a, str>, Bad> {
        let b = self.s.as_bytes();
        let start = self.i + 1;
        // A byte loop, not memchr: most values are a few bytes, shorter than its set-up.
        let mut end = start;
        while let Some(&c) = b.get(end) {
            if c == b'"' || c == b'\\' || c < 0x20 {
                break;
            }
            end += 1;
        }
        match b.get(end) {
            Some(b'"') => {
                self.i = end + 1;
                Ok(Cow::Borrowed(&self.s[start..end]))
            }
            Some(b'\\') => {
                // Escapes: find the closing quote (an escaped character never closes), then
                // let serde_json unescape and check the whole string.
                while let Some(&c) = b.get(end) {
                    match c {
                        b'"' => break,
                        b'\\' => end += 2,
                        _ => end += 1,
                    }
                }
                if end >= b.len() {
                    return Err(Bad(b.len()));
                }
                self.i = end + 1;
                serde_json::from_str::<String>(&self.s[start - 1..=end]).map(Cow::Owned).map_err(|_| Bad(start))
            }
            // A control character, which JSON strings hold only escaped, or the end.
            _ => Err(Bad(end)),
        }
    }

    /// A number, as serde_json reads it: a non-negative integer as `U`, a negative one as
    /// `I`, and as `F` a fraction, an exponent, `-0`, or an integer past 64 bits.
    fn number(&mut self) -> Result<Cell<'a>, Bad> {
        let b = self.s.as_bytes();
        let start = self.i;
        let digits = |mut j: usize| {
            while matches!(b.get(j), Some(b'0'..=b'9')) {
                j += 1;
            }
            j
        };
        let negative = b[start] == b'-';
        let int_start = start + usize::from(negative);
        let mut j = match b.get(int_start) {
            Some(b'0') => int_start + 1,
            Some(b'1'..=b'9') => digits(int_start + 1),
            _ => return Err(Bad(int_start)),
        };
        let int_end = j;
        if b.get(j) == Some(&b'.') {
            if !matches!(b.get(j + 1), Some(b'0'..=b'9')) {
                return Err(Bad(j + 1));
            }
            j = digits(j + 1);
        }
        if matches!(b.get(j), Some(b'e' | b'E')) {
            j += 1;
            if matches!(b.get(j), Some(b'+' | b'-')) {
                j += 1;
            }
            if !matches!(b.get(j), Some(b'0'..=b'9')) {
                return Err(Bad(j));
            }
            j = digits(j);
        }
        self.i = j;
        if j == int_end {
            let magnitude =
                b[int_start..int_end].iter().try_fold(0u64, |n, d| n.checked_mul(10)?.checked_add(u64::from(d - b'0')));
            match magnitude {
                Some(n) if !negative => return Ok(Cell::U(n)),
                Some(n) => {
                    let v = (n as i64).wrapping_neg();
                    return Ok(if v < 0 { Cell::I(v) } else { Cell::F(-(n as f64)) });
                }
                None => {}
            }
        }
        match self.s[start..j].parse::<f64>() {
            Ok(f) if f.is_finite() => Ok(Cell::F(f)),
            _ => Err(Bad(start)),
        }
    }
}
