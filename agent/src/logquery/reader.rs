//! A line reader with bounded memory.
//!
//! `BufRead::read_until` grows its buffer to the longest line it meets, so
//! one log written without newlines (a binary dumped into it, a minified
//! JSON blob) could make the agent allocate the whole file. This reader
//! keeps at most [`MAX_LINE_BYTES`] of a line: the rest of an over-long
//! line is read and thrown away, and the line is marked as cut. It yields
//! bytes, never `String`, so invalid UTF-8 costs nothing here; lines are
//! borrowed from the reader's own buffer, so most are never copied.

use std::io::{self, Read};

/// The longest line kept: far above any sane log line, small enough that a
/// query's memory stays predictable.
pub const MAX_LINE_BYTES: usize = 64 * 1024;

/// How much is read at once: large reads keep syscalls (and gzip calls) off
/// the profile; the buffer is this plus room for one maximal line.
const READ_BYTES: usize = 256 * 1024;

/// One line without its `\n` (nor a `\r` before it).
#[derive(Debug, PartialEq, Eq)]
pub struct Line<'a> {
    pub bytes: &'a [u8],
    /// The line was longer than the cap; `bytes` is its beginning.
    pub cut: bool,
}

pub struct LineReader<R> {
    inner: R,
    buf: Vec<u8>,
    /// `buf[start..end]` holds bytes not yet returned.
    start: usize,
    end: usize,
    /// `buf[start..scanned]` is known to hold no newline.
    scanned: usize,
    /// Set after returning the beginning of an over-long line: bytes are
    /// dropped until its newline.
    skipping: bool,
    eof: bool,
    max_line: usize,
}

impl<R: Read> LineReader<R> {
    pub fn new(inner: R) -> LineReader<R> {
        LineReader::with_max_line(inner, MAX_LINE_BYTES)
    }

    pub fn with_max_line(inner: R, max_line: usize) -> LineReader<R> {
        LineReader {
            inner,
            buf: vec![0; READ_BYTES + max_line + 1],
            start: 0,
            end: 0,
            scanned: 0,
            skipping: false,
            eof: false,
            max_line,
        }
    }

    /// The next line, or `None` at the end of the input. A last line
    /// without a newline is returned too.
    pub fn next_line(&mut self) -> io::Result<Option<Line<'_>>> {
        loop {
            if let Some(found) = memchr::memchr(b'\n', &self.buf[self.scanned..self.end]) {
                let newline = self.scanned + found;
                let begin = self.start;
                self.start = newline + 1;
                self.scanned = self.start;
                if self.skipping {
                    self.skipping = false;
                    continue;
                }
                return Ok(Some(self.line(begin, newline)));
            }
            self.scanned = self.end;
            if self.skipping {
                self.start = self.end;
                self.scanned = self.end;
            } else if self.end - self.start > self.max_line {
                let begin = self.start;
                self.start = self.end;
                self.scanned = self.end;
                self.skipping = true;
                return Ok(Some(Line {
                    bytes: &self.buf[begin..begin + self.max_line],
                    cut: true,
                }));
            }
            if self.eof {
                if self.start < self.end {
                    let begin = self.start;
                    self.start = self.end;
                    return Ok(Some(self.line(begin, self.end)));
                }
                return Ok(None);
            }
            self.fill()?;
        }
    }

    fn line(&self, begin: usize, end: usize) -> Line<'_> {
        if end - begin > self.max_line {
            return Line {
                bytes: &self.buf[begin..begin + self.max_line],
                cut: true,
            };
        }
        let bytes = &self.buf[begin..end];
        Line {
            bytes: bytes.strip_suffix(b"\r").unwrap_or(bytes),
            cut: false,
        }
    }

    /// Moves the unfinished line to the front and reads more after it.
    /// At most `max_line` bytes are pending here (more would have been
    /// cut), so at least `READ_BYTES` are free.
    fn fill(&mut self) -> io::Result<()> {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.scanned -= self.start;
            self.start = 0;
        }
        loop {
            match self.inner.read(&mut self.buf[self.end..]) {
                Ok(0) => {
                    self.eof = true;
                    return Ok(());
                }
                Ok(n) => {
                    self.end += n;
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hands out its data a few bytes at a time, so lines straddle reads.
    struct Trickle<'a>(&'a [u8], usize);

    impl Read for Trickle<'_> {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            let n = self.1.min(self.0.len()).min(out.len());
            out[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    fn lines(data: &[u8], chunk: usize, max_line: usize) -> Vec<(Vec<u8>, bool)> {
        let mut reader = LineReader::with_max_line(Trickle(data, chunk), max_line);
        let mut out = Vec::new();
        while let Some(line) = reader.next_line().unwrap() {
            out.push((line.bytes.to_vec(), line.cut));
        }
        out
    }

    #[test]
    fn lines_are_split_on_newlines_whatever_the_read_sizes() {
        let data = b"one\r\ntwo\n\nlast without newline";
        for chunk in [1, 2, 3, 7, 1000] {
            assert_eq!(
                lines(data, chunk, 64),
                [
                    (b"one".to_vec(), false),
                    (b"two".to_vec(), false),
                    (b"".to_vec(), false),
                    (b"last without newline".to_vec(), false),
                ],
                "chunk {chunk}"
            );
        }
        assert!(lines(b"", 10, 64).is_empty());
        assert_eq!(lines(b"x\n", 10, 64), [(b"x".to_vec(), false)]);
    }

    #[test]
    fn an_over_long_line_keeps_its_beginning_and_the_next_line_is_intact() {
        let mut data = vec![b'a'; 100];
        data.extend_from_slice(b"\nnext\n");
        data.extend(vec![b'b'; 30]);
        for chunk in [1, 7, 64, 1000] {
            let got = lines(&data, chunk, 16);
            assert_eq!(
                got,
                [
                    (vec![b'a'; 16], true),
                    (b"next".to_vec(), false),
                    (vec![b'b'; 16], true),
                ],
                "chunk {chunk}"
            );
        }
        assert_eq!(lines(&[b'c'; 16], 5, 16), [(vec![b'c'; 16], false)]);
    }

    #[test]
    fn non_utf8_bytes_pass_through_untouched() {
        let data = b"caf\xe9\n\xff\xfe\x00\n";
        assert_eq!(
            lines(data, 3, 64),
            [
                (b"caf\xe9".to_vec(), false),
                (b"\xff\xfe\x00".to_vec(), false)
            ]
        );
    }

    #[test]
    fn a_line_of_many_megabytes_costs_no_more_than_the_buffer() {
        let mut reader = LineReader::new(io::repeat(b'x').take(64 << 20).chain(&b"\nend\n"[..]));
        let first = reader.next_line().unwrap().unwrap();
        assert!(first.cut && first.bytes.len() == MAX_LINE_BYTES);
        assert_eq!(reader.next_line().unwrap().unwrap().bytes, b"end");
        assert!(reader.next_line().unwrap().is_none());
        assert_eq!(reader.buf.len(), READ_BYTES + MAX_LINE_BYTES + 1);
    }
}
