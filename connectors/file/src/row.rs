//! A row of text cells in a single allocation, for tables of a million rows kept in
//! memory.

use std::fmt;

/// The bytes taken by a cell count or a cell end.
const WORD: usize = size_of::<u32>();

/// A row of cells: one heap block holding the cell count, the end of each cell and
/// the cells' text back to back, as `[count][end 0]…[end n-1][text]` (the numbers as
/// `u32`, little-endian; each end an offset into the text).
///
/// Why: a `csv::StringRecord` is a box around a position, a byte vector and a vector
/// of `usize` field ends, three allocations and about 300 bytes for a row of 100 bytes.
/// A contacts table of 1,000,000 rows took about 440 MB, held at the sync's peak while
/// the other files are written. This takes one allocation of `4 + 4 × cells + text`
/// bytes per row (132 for a 10-cell row of 88 bytes), and the table's `Vec` 16 bytes
/// a row instead of 8: the peak of the initial sync of 1M contacts fell from 2,901 MiB
/// to 2,580–2,643 MiB (`tandem-bench phase initial`).
pub(crate) struct Row {
    data: Box<[u8]>,
}

/// A row over 4 GiB, or with more than `u32::MAX` cells.
#[derive(Debug)]
pub(crate) struct TooLong;

impl Row {
    /// The row of the cells of `text` that are `lens` bytes long in turn. The lengths
    /// must add up to the text's and cut it at character boundaries.
    pub(crate) fn new(
        text: &str,
        lens: impl ExactSizeIterator<Item = usize>,
    ) -> Result<Row, TooLong> {
        let count = u32::try_from(lens.len()).map_err(|_| TooLong)?;
        u32::try_from(text.len()).map_err(|_| TooLong)?;
        let mut data = Vec::with_capacity(WORD * (1 + lens.len()) + text.len());
        data.extend_from_slice(&count.to_le_bytes());
        let mut end = 0u32;
        for len in lens {
            // The lengths add up to the text's, checked above to fit.
            end += u32::try_from(len).map_err(|_| TooLong)?;
            data.extend_from_slice(&end.to_le_bytes());
        }
        assert_eq!(end as usize, text.len(), "cell lengths add up to the text");
        data.extend_from_slice(text.as_bytes());
        // At capacity: no reallocation.
        Ok(Row {
            data: data.into_boxed_slice(),
        })
    }

    /// The number of cells.
    pub(crate) fn len(&self) -> usize {
        self.word(0) as usize
    }

    /// Cell `i`, if the row has that many.
    pub(crate) fn get(&self, i: usize) -> Option<&str> {
        if i >= self.len() {
            return None;
        }
        let start = if i == 0 { 0 } else { self.word(i) as usize };
        let end = self.word(i + 1) as usize;
        let text = &self.data[self.text_start()..];
        Some(std::str::from_utf8(&text[start..end]).expect("cells are UTF-8"))
    }

    /// The cells in order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &str> {
        let text = std::str::from_utf8(&self.data[self.text_start()..]).expect("rows are UTF-8");
        let mut start = 0;
        self.data[WORD..self.text_start()]
            .chunks_exact(WORD)
            .map(move |end| {
                let end = u32::from_le_bytes(end.try_into().expect("a word")) as usize;
                let cell = &text[start..end];
                start = end;
                cell
            })
    }

    fn text_start(&self) -> usize {
        WORD * (1 + self.len())
    }

    /// The `i`th `u32` of the block: the count, then the ends.
    fn word(&self, i: usize) -> u32 {
        let at = WORD * i;
        u32::from_le_bytes(self.data[at..at + WORD].try_into().expect("a word"))
    }
}

impl std::ops::Index<usize> for Row {
    type Output = str;

    fn index(&self, i: usize) -> &str {
        self.get(i).expect("a cell in the row")
    }
}

impl fmt::Debug for Row {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// Builds a [`Row`] cell by cell; reused, it allocates only for the rows themselves.
#[derive(Debug, Default)]
pub(crate) struct RowBuilder {
    text: String,
    lens: Vec<usize>,
}

impl RowBuilder {
    pub(crate) fn push(&mut self, cell: &str) {
        self.text.push_str(cell);
        self.lens.push(cell.len());
    }

    /// The row of the cells pushed since the last call.
    pub(crate) fn finish(&mut self) -> Result<Row, TooLong> {
        let row = Row::new(&self.text, self.lens.iter().copied());
        self.text.clear();
        self.lens.clear();
        row
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from_cells<'a>(cells: impl IntoIterator<Item = &'a str>) -> Row {
        let mut builder = RowBuilder::default();
        for cell in cells {
            builder.push(cell);
        }
        builder.finish().unwrap()
    }

    #[test]
    fn holds_cells_in_one_block() {
        let cells = ["C1", "", "Zoë, \"日本\"", "🙂", ""];
        let row = from_cells(cells);
        assert_eq!(row.len(), 5);
        assert_eq!(row.iter().collect::<Vec<_>>(), cells);
        for (i, cell) in cells.iter().enumerate() {
            assert_eq!(row.get(i), Some(*cell));
            assert_eq!(&row[i], *cell);
        }
        assert_eq!(row.get(5), None);
        assert_eq!(format!("{row:?}"), format!("{cells:?}"));
    }

    #[test]
    fn an_empty_row_has_no_cells() {
        let row = from_cells([]);
        assert_eq!(row.len(), 0);
        assert_eq!(row.get(0), None);
        assert_eq!(row.iter().count(), 0);
        let blank = from_cells([""]);
        assert_eq!(blank.len(), 1);
        assert_eq!(blank.iter().collect::<Vec<_>>(), [""]);
    }

    #[test]
    fn a_builder_starts_afresh_after_each_row() {
        let mut builder = RowBuilder::default();
        builder.push("a");
        builder.push("bc");
        let first = builder.finish().unwrap();
        builder.push("d");
        let second = builder.finish().unwrap();
        assert_eq!(first.iter().collect::<Vec<_>>(), ["a", "bc"]);
        assert_eq!(second.iter().collect::<Vec<_>>(), ["d"]);
    }
}
