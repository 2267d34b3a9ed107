//! Ids end to end in one buffer, each found by where it ends: what the listings,
//! indexes and writes of a file keep of every row (a million ids as strings of their
//! own cost an allocation each). An end is 4 bytes, not 8: the ids of one file take
//! less than 4 GiB (ten million rows of ids of ten bytes take 100 MB).

/// Invariant: `ends` rises, and its last entry is `ids.len()`.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct IdList {
    ids: String,
    ends: Vec<u32>,
}

impl IdList {
    pub(crate) fn with_capacity(rows: usize, bytes: usize) -> IdList {
        IdList {
            ids: String::with_capacity(bytes),
            ends: Vec::with_capacity(rows),
        }
    }

    pub(crate) fn push(&mut self, id: &str) {
        self.ids.push_str(id);
        let end = u32::try_from(self.ids.len()).expect("less than 4 GiB of ids in a file");
        self.ends.push(end);
    }

    /// `other`'s ids after these.
    pub(crate) fn append(&mut self, other: IdList) {
        other.iter().for_each(|id| self.push(id));
    }

    pub(crate) fn len(&self) -> usize {
        self.ends.len()
    }

    /// The bytes of every id together.
    pub(crate) fn bytes(&self) -> usize {
        self.ids.len()
    }

    /// Id `i`.
    pub(crate) fn get(&self, i: usize) -> &str {
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        &self.ids[start..self.ends[i] as usize]
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &str> {
        (0..self.len()).map(|i| self.get(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_read_back_as_pushed_and_appended() {
        let mut list = IdList::default();
        ["C1", "", "C22"].into_iter().for_each(|id| list.push(id));
        let mut more = IdList::with_capacity(1, 2);
        more.push("K7");
        list.append(more);
        assert_eq!(list.len(), 4);
        assert_eq!(list.iter().collect::<Vec<_>>(), ["C1", "", "C22", "K7"]);
        assert_eq!((list.get(2), list.bytes()), ("C22", 7));
    }
}
