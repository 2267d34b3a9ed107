//! Cutting a big CSV file into pieces that parse on their own, so that its rows are
//! parsed on several threads.
//!
//! A piece may only start where a reader going through the whole file would start a
//! record: just after a line end that is not inside a quoted field. Counting quotes is
//! not enough (a quote inside an unquoted field is a plain character to the `csv`
//! crate), so the bytes before each cut are walked with the states the crate's own
//! reader uses for its default settings (`"` quotes, doubled to escape, `,` between
//! fields, CR or LF ending a record).

use std::io::{self, BufRead, BufReader, Read};

/// Files smaller than this are parsed on one thread: a thread costs more than it saves.
pub(crate) const PARALLEL_FROM: u64 = 8 << 20;

/// Where a piece of the file starts: its byte offset and the line it starts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cut {
    pub offset: u64,
    pub line: u64,
}

/// Where the reader stands after a byte, as far as record boundaries go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Nothing of a record read yet: line ends here are empty lines, skipped.
    RecordStart,
    /// At the start of a field after the first.
    FieldStart,
    /// In a field that did not start with a quote: quotes are plain characters.
    Unquoted,
    /// In a quoted field.
    Quoted,
    /// A quote in a quoted field: the field's end, or the first of a doubled quote.
    QuotedQuote,
}

impl State {
    fn next(self, byte: u8) -> State {
        match (self, byte) {
            (State::Quoted, b'"') => State::QuotedQuote,
            (State::Quoted, _) => State::Quoted,
            (State::QuotedQuote | State::FieldStart | State::RecordStart, b'"') => State::Quoted,
            (_, b'\n' | b'\r') => State::RecordStart,
            (_, b',') => State::FieldStart,
            _ => State::Unquoted,
        }
    }
}

/// Up to `pieces - 1` cuts of the bytes `data` reads (the whole file, `size` bytes
/// long): each the first record start at or after the next `size / pieces` bytes,
/// never before the end of the header row. Fewer cuts when records are too long to
/// fall in every piece.
///
/// A cut is where the `csv` reader stands once it has read the record before: just
/// after the byte that ended it (the CR of a CR LF; the LF and any empty lines after
/// are skipped by the next read). A reader started there reports the lines and rows a
/// reader of the whole file does.
pub(crate) fn cuts(data: impl Read, size: u64, pieces: u64) -> io::Result<Vec<Cut>> {
    let mut cuts = Vec::new();
    if pieces < 2 || size < PARALLEL_FROM {
        return Ok(cuts);
    }
    let target = |k: u64| size / pieces * k;
    let mut reader = BufReader::with_capacity(1 << 20, data);
    let (mut state, mut offset, mut line) = (State::RecordStart, 0u64, 1u64);
    let mut header_done = false;
    loop {
        let buf = reader.fill_buf()?;
        if buf.is_empty() {
            return Ok(cuts);
        }
        let len = buf.len();
        let mut i = 0;
        while i < len {
            let next = target(cuts.len() as u64 + 1);
            if header_done && offset + (i as u64) < next {
                // Far from the next cut: only quotes change what a line end means.
                let stop = len.min(usize::try_from(next - offset).unwrap_or(usize::MAX));
                state = skip(state, &buf[i..stop]);
                line += memchr::memchr_iter(b'\n', &buf[i..stop]).count() as u64;
                i = stop;
                continue;
            }
            let (byte, before) = (buf[i], state);
            state = state.next(byte);
            line += u64::from(byte == b'\n');
            i += 1;
            if state != State::RecordStart || before == State::RecordStart {
                continue;
            }
            let after = offset + i as u64;
            if !header_done {
                header_done = true;
            } else if after < size {
                cuts.push(Cut {
                    offset: after,
                    line,
                });
                if cuts.len() as u64 == pieces - 1 {
                    return Ok(cuts);
                }
            }
        }
        offset += len as u64;
        reader.consume(len);
    }
}

/// The state after `bytes`, from `state`, jumping from quote to quote: outside quotes
/// the state after a run of other bytes is that after its last byte.
fn skip(mut state: State, bytes: &[u8]) -> State {
    let mut i = 0;
    while i < bytes.len() {
        let quote = memchr::memchr(b'"', &bytes[i..]);
        if state == State::Quoted {
            let Some(q) = quote else {
                return State::Quoted;
            };
            state = State::QuotedQuote;
            i += q + 1;
            continue;
        }
        let plain = &bytes[i..i + quote.unwrap_or(bytes.len() - i)];
        if let Some(&last) = plain.last() {
            state = state.next(last);
        }
        let Some(q) = quote else {
            return state;
        };
        state = state.next(b'"');
        i += q + 1;
    }
    state
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Cuts of `text` repeated until it is big enough to be cut.
    fn cuts_of(text: &str, pieces: u64) -> (String, Vec<Cut>) {
        let header = "id,name,notes\n";
        let mut data = header.to_owned();
        while (data.len() as u64) < PARALLEL_FROM + 1000 {
            data.push_str(text);
        }
        let cuts = cuts(data.as_bytes(), data.len() as u64, pieces).unwrap();
        (data, cuts)
    }

    /// Where the whole file's reader starts each record: byte offset to line.
    fn record_starts(data: &str) -> std::collections::HashMap<u64, u64> {
        let mut reader = csv::ReaderBuilder::new()
            .flexible(true)
            .from_reader(data.as_bytes());
        let mut starts = std::collections::HashMap::new();
        let mut row = csv::StringRecord::new();
        while reader.read_record(&mut row).unwrap() {
            let position = row.position().unwrap();
            starts.insert(position.byte(), position.line());
        }
        starts
    }

    /// Every cut starts a record: the rows parsed from it on are the whole file's.
    fn check_against_the_csv_reader(data: &str, cuts: &[Cut]) {
        check_against(&record_starts(data), cuts);
    }

    fn check_against(starts: &std::collections::HashMap<u64, u64>, cuts: &[Cut]) {
        for cut in cuts {
            assert_eq!(
                starts.get(&cut.offset),
                Some(&cut.line),
                "cut at byte {} is not the start of a record on line {}",
                cut.offset,
                cut.line
            );
        }
    }

    #[test]
    fn cuts_fall_on_record_starts_outside_quoted_line_ends() {
        let rows = "C1,\"Ann \"\"Nan\"\"\nLee\",\"a, \nb\"\nC2,say \"hi\",x\r\n\nC3,,\"\n\"\n\r\rC4,\"\"\r";
        for pieces in [2, 3, 4, 7] {
            let (data, cuts) = cuts_of(rows, pieces);
            assert_eq!(cuts.len() as u64, pieces - 1);
            check_against_the_csv_reader(&data, &cuts);
            assert!(cuts.windows(2).all(|w| w[0].offset < w[1].offset));
        }
    }

    /// Bytes drawn from the ones that matter (quotes, commas, CR, LF) and a letter, in
    /// many mixes: every cut must still be a record start of the whole file's reader.
    #[test]
    fn cuts_of_random_bytes_are_record_starts() {
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        for round in 0..4 {
            let mut data = String::from("id,a,b\n");
            while (data.len() as u64) < PARALLEL_FROM + 4096 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                // Letters are most common, so lines are not all empty.
                let alphabet = ["a", "a", "a", "a", ",", "\"", "\n", "\r", "\r\n"];
                let weight = if round % 2 == 0 { 9 } else { 7 };
                data.push_str(alphabet[(seed % weight) as usize]);
            }
            let starts = record_starts(&data);
            for pieces in [2, 3, 5] {
                let cuts = cuts(data.as_bytes(), data.len() as u64, pieces).unwrap();
                assert!(!cuts.is_empty(), "round {round}: no record start found");
                check_against(&starts, &cuts);
            }
        }
    }

    #[test]
    fn a_field_quoted_past_every_target_leaves_the_file_whole() {
        let mut data = "id,notes\nC1,\"".to_owned();
        data.push_str(&"x\n".repeat(PARALLEL_FROM as usize));
        data.push_str("\"\n");
        assert_eq!(cuts(data.as_bytes(), data.len() as u64, 2).unwrap(), []);
    }

    #[test]
    fn small_files_are_not_cut() {
        let data = "id,name\nC1,Ann\nC2,Bob\n";
        assert_eq!(cuts(data.as_bytes(), data.len() as u64, 2).unwrap(), []);
    }
}
