//! The links a run makes, by contact: added to while the head is planned, then
//! settled into two flat vectors in contact order for the hubs, which read them a
//! range at a time.

use super::NewLink;

/// One new link of a contact: (relation, account id, how).
pub(super) type NewLinkOf<'a> = (usize, &'a str, NewLink);

/// New links by contact.
///
/// Why two shapes: the head adds links and asks for them in any order (a link found
/// again makes its contact linked for the next candidate), so it needs a map, a hash
/// map since matches come in no order (a tree took 17 s for the 8M links of a first
/// sync at 10M). The hubs only ask, in contact order. A first sync at 1M makes
/// 805,000 links: in a map each took a slot and a vector of its own, about 105 bytes;
/// settled, 56.
#[derive(Debug, Default)]
pub(super) struct NewLinks<'a> {
    /// Before [`NewLinks::settle`].
    growing: crate::IdMap<crate::HashedId<'a>, Vec<NewLinkOf<'a>>>,
    /// After it: the contact of each link in `links`, in id order.
    contacts: Vec<&'a str>,
    /// The [`crate::records::prefix`] of each of `contacts`: asked for the links of
    /// every contact of a run, a search over the ids chased a pointer at each step
    /// (about a second of a first sync's planning at 1M).
    prefixes: Vec<u64>,
    links: Vec<NewLinkOf<'a>>,
}

impl<'a> NewLinks<'a> {
    /// Adds a link of `contact`; only before [`NewLinks::settle`].
    pub fn add(&mut self, contact: &'a str, link: NewLinkOf<'a>) {
        debug_assert!(self.contacts.is_empty(), "a link added once settled");
        let links = self
            .growing
            .entry(crate::HashedId::of(contact))
            .or_default();
        // Most contacts get one: sized to its links, where a push kept room for four.
        links.reserve_exact(1);
        links.push(link);
    }

    /// Room for `contacts` more contacts with links, before they are added.
    pub fn reserve(&mut self, contacts: usize) {
        self.growing.reserve(contacts);
    }

    /// The links of `contact`, in the order added.
    pub fn of(&self, contact: &'a str) -> &[NewLinkOf<'a>] {
        if !self.growing.is_empty() {
            let links = self.growing.get(&crate::HashedId::of(contact));
            return links.map_or(&[], Vec::as_slice);
        }
        let found =
            crate::records::id_range(&self.prefixes, contact, |i| self.contacts[i].cmp(contact));
        &self.links[found]
    }

    pub fn has(&self, contact: &'a str) -> bool {
        !self.of(contact).is_empty()
    }

    /// Every contact with a new link, once each, in id order; only once settled.
    pub fn contacts(&self) -> impl Iterator<Item = &'a str> + '_ {
        debug_assert!(self.growing.is_empty(), "asked for in order before settled");
        let mut last = None;
        (self.contacts.iter().copied()).filter(move |c| last.replace(*c) != Some(*c))
    }

    /// From here on only asked: the links in contact order, flat.
    pub fn settle(&mut self) {
        let mut growing: Vec<(u64, &'a str, Vec<NewLinkOf<'a>>)> =
            (std::mem::take(&mut self.growing).into_iter())
                .map(|(contact, links)| (0, contact.id(), links))
                .collect();
        // Each id read once, in the order the ids lie in memory, not the map's: read
        // at random, the ids of records in a mapped file brought all its pages in
        // (`crate::HashedId`). Sorted by prefix, the ids themselves are compared only
        // among those that share one, which lie close together.
        growing.sort_unstable_by_key(|(_, contact, _)| contact.as_ptr() as usize);
        for (prefix, contact, _) in &mut growing {
            *prefix = crate::records::prefix(contact);
        }
        growing.sort_unstable_by(|(pa, a, _), (pb, b, _)| pa.cmp(pb).then_with(|| a.cmp(b)));
        let count = growing
            .iter()
            .map(|(_, _, links)| links.len())
            .sum::<usize>();
        self.contacts.reserve_exact(count);
        self.prefixes.reserve_exact(count);
        self.links.reserve_exact(count);
        for (prefix, contact, links) in growing {
            for link in links {
                self.contacts.push(contact);
                self.prefixes.push(prefix);
                self.links.push(link);
            }
        }
    }

    /// Lets go of the links of contacts before `to` (all, for `None`): their range
    /// is planned.
    pub fn forget_before(&mut self, to: Option<&str>) {
        let end = match to {
            Some(to) => {
                crate::records::id_range(&self.prefixes, to, |i| self.contacts[i].cmp(to)).start
            }
            None => self.contacts.len(),
        };
        if end > 0 {
            self.contacts.drain(..end);
            self.prefixes.drain(..end);
            self.links.drain(..end);
            self.contacts.shrink_to_fit();
            self.prefixes.shrink_to_fit();
            self.links.shrink_to_fit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settled_links_are_found_as_added_and_let_go_a_range_at_a_time() {
        let mut links = NewLinks::default();
        let how = NewLink::Match { tier: 1 };
        links.add("C3", (0, "K3", how));
        links.add("C1", (0, "K1", how));
        links.add("C3", (1, "V3", NewLink::Operator));
        links.add("C2", (0, "K2", how));
        let before: Vec<Vec<NewLinkOf>> = ["C1", "C2", "C3", "C4"]
            .map(|c| links.of(c).to_vec())
            .into();
        links.settle();
        let after: Vec<Vec<NewLinkOf>> = ["C1", "C2", "C3", "C4"]
            .map(|c| links.of(c).to_vec())
            .into();
        assert_eq!(after, before);
        assert_eq!(
            links.of("C3"),
            [(0, "K3", how), (1, "V3", NewLink::Operator)]
        );
        assert_eq!(links.contacts().collect::<Vec<_>>(), ["C1", "C2", "C3"]);
        assert!(links.has("C2") && !links.has("C0"));
        links.forget_before(Some("C3"));
        assert!(!links.has("C1") && !links.has("C2") && links.has("C3"));
        links.forget_before(None);
        assert_eq!(links.contacts().count(), 0);
    }

    proptest::proptest! {
        /// Added in any order, from ids lying anywhere in memory (some sharing a
        /// prefix longer than one): once settled, each contact's links are the ones
        /// added, in the order added, and the contacts come in id order, as a map
        /// of ids to their links would give them.
        #[test]
        fn settled_links_answer_as_a_map_of_ids_to_their_links_would(
            adds in proptest::collection::vec((0u32..40, 0usize..3), 0..120),
            scattered in proptest::collection::vec(0u32..40, 0..40),
        ) {
            let id_of = |n: u32| match n % 3 {
                0 => format!("C{n}"),
                1 => format!("CONTACT-SHARED-{n:03}"),
                _ => format!("CONTACT-SHARED-{n:03}-{}", n * 7),
            };
            // Each id a string of its own, allocated in another order than added.
            let mut ids: Vec<String> = scattered.iter().map(|n| id_of(*n)).collect();
            ids.extend((0..40).map(id_of));
            let find = |n: u32| ids.iter().rfind(|id| **id == id_of(n)).unwrap().as_str();
            let mut links = NewLinks::default();
            let mut model: std::collections::BTreeMap<&str, Vec<NewLinkOf>> = Default::default();
            for (i, (n, r)) in adds.iter().enumerate() {
                let link = (*r, if i % 2 == 0 { "K" } else { "V" }, NewLink::Match { tier: i });
                links.add(find(*n), link);
                model.entry(find(*n)).or_default().push(link);
            }
            links.settle();
            let contacts: Vec<&str> = links.contacts().collect();
            let want: Vec<&str> = model.keys().copied().collect();
            proptest::prop_assert_eq!(contacts, want);
            for n in 0..40 {
                let id = find(n);
                let want = model.get(id).map_or(&[][..], Vec::as_slice);
                proptest::prop_assert_eq!(links.of(id), want);
            }
        }
    }
}
