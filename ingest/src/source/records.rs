//! The record cutter of TSV and CSV lists: cuts a text stream into batches of whole records, so
//! that polars parses each batch on its own and a quoted field never straddles two batches.
use anyhow::{bail, Result};
use std::io::BufRead;

/// A record of a text list longer than this is refused (an unbalanced quote, most likely).
const MAX_RECORD_BYTES: usize = 64 << 20;

/// Cuts a text list into batches of whole records, as the csv crate reads them: a record ends
/// at a line break (LF, CRLF or a lone CR) outside a quoted field, blank lines are skipped, and
/// a quote opens a quoted field only at the start of a field (`""` inside one is a quote).
/// Line breaks are handed on as LF. `quoting` is off for TSV.
pub(super) struct Records {
    src: Box<dyn BufRead + Send>,
    sep: u8,
    quoting: bool,
    line: Vec<u8>,
    /// Physical lines read so far.
    pub(super) lineno: usize,
    /// The line the current record started on.
    record_line: usize,
    eof: bool,
    started: bool,
    in_quotes: bool,
    quote_closed: bool,
    field_start: bool,
    /// Bytes of the current record handed on so far (0 between records).
    record_len: usize,
    /// Fields of the current record so far.
    fields: u32,
}

impl Records {
    pub(super) fn new(src: Box<dyn BufRead + Send>, sep: u8, quoting: bool) -> Records {
        Records {
            src,
            sep,
            quoting,
            line: Vec::new(),
            lineno: 0,
            record_line: 1,
            eof: false,
            started: false,
            in_quotes: false,
            quote_closed: false,
            field_start: true,
            record_len: 0,
            fields: 1,
        }
    }

    /// Appends whole records to `buf` until it holds `rows` records or `bytes` bytes, or the
    /// input ends, and the number of fields of each to `fields`; returns how many records were
    /// appended.
    pub(super) fn fill(
        &mut self,
        buf: &mut Vec<u8>,
        fields: &mut Vec<u32>,
        rows: usize,
        bytes: usize,
    ) -> Result<usize> {
        let mut n = 0;
        while !self.eof && ((n < rows && buf.len() < bytes) || self.record_len > 0) {
            self.line.clear();
            if self.src.read_until(b'\n', &mut self.line)? == 0 {
                self.eof = true;
                // The last record had no line break (or an unclosed quote): end it here.
                n += self.end_record(buf, fields);
                break;
            }
            self.lineno += 1;
            let line = std::mem::take(&mut self.line);
            n += self.cut_line(&line, buf, fields);
            self.line = line;
            if self.record_len > MAX_RECORD_BYTES {
                bail!(
                    "the record starting on line {} is longer than {} MiB (an unclosed quote?)",
                    self.record_line,
                    MAX_RECORD_BYTES >> 20
                );
            }
        }
        Ok(n)
    }

    /// Hands on the line just read (all of it, or its part in the current record); returns how
    /// many records it ended.
    fn cut_line(&mut self, line: &[u8], buf: &mut Vec<u8>, fields: &mut Vec<u32>) -> usize {
        let mut line = line;
        if !self.started {
            self.started = true;
            line = line.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(line);
        }
        if self.record_len == 0 {
            self.record_line = self.lineno;
        }
        let plain = self.record_len == 0
            && !line.contains(&b'\r')
            && !(self.quoting && line.contains(&b'"'));
        if !plain {
            return self.scan(line, buf, fields);
        }
        // A whole record on one line, no quotes to follow: hand it on as it is.
        if line == b"\n" || line.is_empty() {
            return 0;
        }
        buf.extend_from_slice(line);
        if !line.ends_with(b"\n") {
            buf.push(b'\n');
        }
        fields.push(1 + line.iter().filter(|&&b| b == self.sep).count() as u32);
        1
    }

    /// Hands on `line` byte by byte, following quotes and field separators; returns how many
    /// records it ended.
    fn scan(&mut self, line: &[u8], buf: &mut Vec<u8>, fields: &mut Vec<u32>) -> usize {
        let mut n = 0;
        for &b in line {
            if self.in_quotes {
                if b == b'"' {
                    self.in_quotes = false;
                    self.quote_closed = true;
                }
            } else if self.quote_closed && b == b'"' {
                // `""` inside a quoted field.
                self.in_quotes = true;
                self.quote_closed = false;
            } else {
                self.quote_closed = false;
                if b == b'\n' || b == b'\r' {
                    n += self.end_record(buf, fields);
                    self.field_start = true;
                    self.record_line = self.lineno + usize::from(b == b'\n');
                    continue;
                }
                if self.quoting && b == b'"' && self.field_start {
                    self.in_quotes = true;
                }
                self.field_start = b == self.sep;
                self.fields += u32::from(self.field_start);
            }
            buf.push(b);
            self.record_len += 1;
        }
        n
    }

    /// Ends the current record, if it has begun; returns 1 if it had.
    fn end_record(&mut self, buf: &mut Vec<u8>, fields: &mut Vec<u32>) -> usize {
        let ended = self.record_len > 0;
        if ended {
            buf.push(b'\n');
            fields.push(self.fields);
        }
        self.record_len = 0;
        self.fields = 1;
        usize::from(ended)
    }
}
