//! Writes: conditional `PUT`s and `DELETE`s, several at once, each safe to retry.
//!
//! A request whose reply was lost is sent again by the HTTP layer; the server may have
//! acted on the first try. A create is a `PUT` with `If-None-Match: *` to a fresh
//! `<uuid>.vcf`, so a second try cannot make a second card: it gets 412, and a card at
//! that href with our UID is the one the first try stored. An update retried after
//! its first try was stored gets 412 too (the ETag moved): when the card now holds what
//! we wrote, it was our write. A delete retried after its first try gets 404: done.

use futures_util::StreamExt as _;
use tandem_connector::{ConnectorError, WriteOp, WriteOutcome, Written};
use tandem_model::{EntityKind, Fields, field};

use crate::vcard::Card;
use crate::{CarddavConnector, mapping, new_uuid};

/// What a `PUT` ended with.
enum Put {
    Done(Written),
    /// 412: the precondition failed; `repeated` when an earlier try may have been stored.
    Refused {
        repeated: bool,
    },
}

impl CarddavConnector {
    /// Applies `ops`, up to `max_concurrent_writes` at once, outcomes in op order. Ops
    /// on the same card run one after the other. A slow write holds up no other: the
    /// next op starts as soon as any write ends (outcomes are put in order after).
    pub(crate) async fn write_all(&self, ops: Vec<WriteOp>) -> Vec<WriteOutcome> {
        let mut ids = std::collections::HashSet::new();
        let distinct = ops.iter().filter_map(WriteOp::id).all(|id| ids.insert(id));
        let at_once = if distinct {
            self.max_concurrent_writes
        } else {
            1
        };
        let mut done: Vec<(usize, WriteOutcome)> =
            futures_util::stream::iter(ops.into_iter().enumerate())
                .map(|(i, op)| async move { (i, self.write_one(op).await) })
                .buffer_unordered(at_once)
                .collect()
                .await;
        done.sort_unstable_by_key(|(i, _)| *i);
        done.into_iter().map(|(_, outcome)| outcome).collect()
    }

    async fn write_one(&self, op: WriteOp) -> WriteOutcome {
        match op {
            WriteOp::Create { fields, id } => self.create(&fields, id).await,
            WriteOp::Update {
                id,
                version,
                changes,
            } => {
                check_names(&mut changes.keys().map(|n| n.as_str()), Some(&id))?;
                let (etag, mut card) = self.get(&id).await?;
                if version.as_ref().is_some_and(|v| *v != etag) {
                    return Err(ConnectorError::Conflict { id });
                }
                if mapping::is_group(&card) {
                    return Err(ConnectorError::invalid(
                        Some(&id),
                        "a contact group card, not a contact: Tandem does not write it",
                    ));
                }
                mapping::apply(&mut card, &changes);
                match self.put(&id, &card, ("If-Match", &etag)).await? {
                    Put::Done(w) => Ok(w),
                    Put::Refused { repeated: true } => self.own_update(&id, &card).await,
                    Put::Refused { repeated: false } => Err(ConnectorError::Conflict { id }),
                }
            }
            WriteOp::Delete { id, version } => self.delete(id, version).await,
        }
    }

    /// A new card at `id` (one [`Connector::new_id`] gave: `<uid>.vcf`), or at a fresh
    /// `<uuid>.vcf`.
    async fn create(&self, fields: &Fields, id: Option<String>) -> WriteOutcome {
        check_names(&mut fields.iter().map(|(n, _)| n.as_str()), None)?;
        let id = id.unwrap_or_else(|| format!("{}.vcf", new_uuid()));
        let uid = match id.strip_suffix(".vcf") {
            Some(uid) if !uid.is_empty() && !uid.contains(['/', '?', '#', '%']) => uid,
            _ => {
                return Err(ConnectorError::invalid(
                    Some(&id),
                    "a card's id is a file name ending in `.vcf`: one `new_id` gave",
                ));
            }
        };
        let card = mapping::new_card(uid, fields);
        match self.put(&id, &card, ("If-None-Match", "*")).await? {
            Put::Done(w) => Ok(w),
            // The href is a uuid of our own: a card there with our UID is an earlier
            // try of this create (a retry after a lost reply, or a run cut short).
            Put::Refused { .. } => match self.get(&id).await {
                Ok((etag, stored))
                    if stored.first("UID").map(|p| p.text()).as_deref() == Some(uid) =>
                {
                    Ok(written(&id, etag))
                }
                Ok(_) | Err(ConnectorError::NotFound { .. }) => {
                    Err(ConnectorError::Conflict { id })
                }
                Err(e) => Err(e),
            },
        }
    }

    /// A 412 on an update whose first try may have been stored: ours if the card now
    /// holds what we wrote (compared parsed: servers re-serialise cards).
    async fn own_update(&self, id: &str, sent: &Card) -> WriteOutcome {
        let (etag, stored) = self.get(id).await?;
        if mapping::to_fields(&stored) == mapping::to_fields(sent) {
            Ok(written(id, etag))
        } else {
            Err(ConnectorError::Conflict { id: id.into() })
        }
    }

    async fn delete(&self, id: String, version: Option<String>) -> WriteOutcome {
        let url = self.dav.member_url(&id);
        let headers: Vec<(&'static str, &str)> = version
            .as_deref()
            .map(|v| vec![("If-Match", v)])
            .unwrap_or_default();
        let a = self.dav.request("DELETE", &url, &headers, None).await?;
        match a.status.as_u16() {
            200 | 204 => Ok(Written {
                id,
                version: None,
                modified_at: None,
            }),
            // Gone because our own first try deleted it.
            404 | 410 if a.repeated => Ok(Written {
                id,
                version: None,
                modified_at: None,
            }),
            404 | 410 => Err(ConnectorError::NotFound { id }),
            412 => Err(ConnectorError::Conflict { id }),
            _ => Err(ConnectorError::fatal(format!(
                "DELETE {url}: unexpected {}: {}",
                a.status,
                self.dav.server_text(&a.body, None)
            ))),
        }
    }

    pub(crate) async fn get(&self, id: &str) -> Result<(String, Card), ConnectorError> {
        let url = self.dav.member_url(id);
        let a = self.dav.request("GET", &url, &[], None).await?;
        match a.status.as_u16() {
            200 => {}
            404 | 410 => return Err(ConnectorError::NotFound { id: id.into() }),
            _ => {
                return Err(ConnectorError::fatal(format!(
                    "GET {url}: unexpected {}: {}",
                    a.status,
                    self.dav.server_text(&a.body, None)
                )));
            }
        }
        let etag = a
            .etag
            .ok_or_else(|| ConnectorError::fatal(format!("GET {url}: no ETag")))?;
        let card = Card::parse(&a.body).map_err(|e| {
            let e = self.dav.mask(&e);
            ConnectorError::invalid(Some(id), format!("{url} is not a readable vCard: {e}"))
        })?;
        Ok((etag, card))
    }

    async fn put(
        &self,
        id: &str,
        card: &Card,
        precondition: (&'static str, &str),
    ) -> Result<Put, ConnectorError> {
        let url = self.dav.member_url(id);
        let text = card.to_text();
        let headers = [precondition, ("Content-Type", "text/vcard; charset=utf-8")];
        let a = self
            .dav
            .request("PUT", &url, &headers, Some(text.clone()))
            .await?;
        match a.status.as_u16() {
            200 | 201 | 204 => {}
            412 => {
                return Ok(Put::Refused {
                    repeated: a.repeated,
                });
            }
            403 => {
                return Err(ConnectorError::Auth {
                    message: format!("PUT {url}: 403 Forbidden (may this user write to the book?)"),
                });
            }
            _ => {
                return Err(ConnectorError::invalid(
                    Some(id),
                    format!(
                        "PUT {url}: the server refused the card: {}: {}",
                        a.status,
                        self.dav.server_text(&a.body, Some(&text))
                    ),
                ));
            }
        }
        // Servers may re-serialise the card; the ETag they report is what a read shows.
        let version = match a.etag {
            Some(e) => e,
            None => self.get(id).await?.0,
        };
        Ok(Put::Done(written(id, version)))
    }
}

fn written(id: &str, etag: String) -> Written {
    Written {
        id: id.into(),
        version: Some(etag),
        modified_at: None,
    }
}

fn check_names(
    names: &mut dyn Iterator<Item = &str>,
    id: Option<&str>,
) -> Result<(), ConnectorError> {
    for n in names {
        if !field::is_canonical_for(EntityKind::Contact, n) && !field::is_extra(n) {
            return Err(ConnectorError::invalid(
                id,
                format!("`{n}` is not a contact field (nor an x_ extra)"),
            ));
        }
    }
    Ok(())
}
