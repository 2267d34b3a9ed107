//! The config resolved into what planning needs: field sets as `FieldName`s, preserve
//! lists filled in from the model's defaults (R8).

use tandem_model::normalise::Comparison;
use tandem_model::{
    ContactType, EntityKind, FieldName, Fields, PhoneRegion, RecordView, Value, field,
};

use crate::config::{ConflictPolicy, InitialSide, SyncConfig};

/// One business relation, ready for planning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    pub code: String,
    pub kind: EntityKind,
    pub connector: String,
    /// Fields carried between a contact and an account of this relation.
    pub shared: Vec<FieldName>,
    /// Shared fields never written into the account: the account owns them.
    pub preserve: Vec<FieldName>,
    pub tiers: Vec<Tier>,
    pub conflict: ConflictPolicy,
    /// Per-field exceptions to `conflict`.
    pub conflict_fields: Vec<(FieldName, ConflictPolicy)>,
    /// Templates for accounts created from contacts (R5), first match wins.
    pub templates: Vec<Template>,
    pub initial: InitialSide,
    pub create_contacts: bool,
    /// Phones compared as E.164 in this region (R20), in matching and merging.
    pub phone_region: Option<PhoneRegion>,
}

impl Relation {
    /// The conflict policy for `field` (R15).
    pub fn policy(&self, field: &FieldName) -> ConflictPolicy {
        self.conflict_fields
            .iter()
            .find(|(f, _)| f == field)
            .map(|(_, p)| *p)
            .unwrap_or(self.conflict)
    }

    /// How merging compares values of this relation's pairs (R20): text byte for byte,
    /// VAT numbers, countries, e-mail domains (and phones, when asked) normalised.
    pub fn comparison(&self) -> Comparison {
        Comparison {
            exact: true,
            phone_region: self.phone_region,
        }
    }

    /// The template for an account created from `contact`: `Ok(None)` when the
    /// relation has no templates, an error naming the contact's values when it has
    /// some and none applies (R5: never a silent default).
    pub fn template_for(
        &self,
        contact: &(impl RecordView + ?Sized),
    ) -> Result<Option<&Template>, String> {
        if self.templates.is_empty() {
            return Ok(None);
        }
        if let Some(t) = self.templates.iter().find(|t| t.applies_to(contact)) {
            return Ok(Some(t));
        }
        let mut seen: Vec<String> = self
            .templates
            .iter()
            .flat_map(|t| t.when.iter().map(|(f, _)| f.clone()))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .map(|f| format!("{f}={:?}", contact_value(contact, &f)))
            .collect();
        seen.sort();
        Err(format!(
            "no template of relation {} applies to contact {} ({}); add a rule for it or an unconditional `template`",
            self.code,
            contact.record_id(),
            seen.join(", ")
        ))
    }
}

/// Field values set on accounts created from a contact, where the contact left them
/// empty (R5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    /// 0-based position among the relation's rules (the `template` shorthand is last).
    pub index: usize,
    pub when: Vec<(FieldName, String)>,
    pub fields: Fields,
}

impl Template {
    /// Values compare trimmed and in any case, and as their field's form (R20): a rule
    /// on `country_code = "CH"` applies to a contact in `Schweiz`.
    pub fn applies_to(&self, contact: &(impl RecordView + ?Sized)) -> bool {
        let loose = Comparison::default();
        self.when.iter().all(|(f, want)| {
            let (mut have, mut wanted) = (String::new(), String::new());
            let value = contact_value(contact, f);
            loose.push_key(&mut have, f.as_str(), &value, None);
            loose.push_key(&mut wanted, f.as_str(), want, None);
            have == wanted
        })
    }
}

/// A contact's value as templates see it: `contact_type` defaults to `company`.
fn contact_value(contact: &(impl RecordView + ?Sized), field: &FieldName) -> String {
    if field.as_str() == field::CONTACT_TYPE {
        return ContactType::from_field(contact.text_of(field::CONTACT_TYPE))
            .as_str()
            .to_owned();
    }
    contact
        .value_of(field)
        .map_or_else(String::new, |v| v.to_cell())
}

/// A match tier: fields that must all be filled and the same on both sides, compared
/// as `comparison` says (R4, R20).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tier {
    pub fields: Vec<FieldName>,
    pub comparison: Comparison,
}

/// The contact side plus every relation, in config order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relations {
    pub contacts_connector: String,
    /// Shared fields never written into a contact: the contact owns them.
    pub contact_preserve: Vec<FieldName>,
    pub relations: Vec<Relation>,
    /// Into how many partitions workers cut the work (`[state] partitions`; 1: none).
    pub partitions: u32,
}

impl Relations {
    /// The same relations, the work cut into `partitions` (`crate::partition`).
    pub fn with_partitions(mut self, partitions: u32) -> Relations {
        self.partitions = partitions.max(1);
        self
    }

    /// Every scope under which the state may keep hashes of `connector`'s `kind`: its
    /// own, and each partition's. A mark to read a record again goes to all of them.
    pub fn scopes_of(&self, connector: &str, kind: EntityKind) -> Vec<tandem_state::Scope> {
        let mut scopes = vec![tandem_state::Scope::new(connector, kind)];
        if self.partitions > 1 {
            let partitions =
                (0..self.partitions).filter_map(|i| crate::Partition::new(i, self.partitions).ok());
            scopes.extend(partitions.map(|p| p.scope(connector, kind)));
        }
        scopes
    }

    pub fn from_config(config: &SyncConfig) -> Relations {
        let names = |list: &[String]| list.iter().map(|f| FieldName::new(f)).collect::<Vec<_>>();
        let statics = |list: &[&str]| list.iter().map(|f| FieldName::new(f)).collect::<Vec<_>>();
        let relations = config
            .relations
            .iter()
            .map(|(code, r)| Relation {
                code: code.clone(),
                kind: r.kind,
                connector: r.connector.clone(),
                shared: r
                    .fields
                    .as_deref()
                    .map(names)
                    .unwrap_or_else(|| statics(field::shared(r.kind))),
                preserve: r
                    .preserve
                    .as_deref()
                    .map(names)
                    .unwrap_or_else(|| statics(field::preserve(r.kind))),
                tiers: r
                    .match_tiers
                    .iter()
                    .map(|t| Tier {
                        fields: names(t.fields()),
                        comparison: Comparison {
                            exact: t.exact(),
                            phone_region: r.e164_region(),
                        },
                    })
                    .collect(),
                conflict: r.conflict,
                conflict_fields: r
                    .conflict_fields
                    .iter()
                    .map(|(f, p)| (FieldName::new(f), *p))
                    .collect(),
                templates: r
                    .templates
                    .iter()
                    .map(|t| (t.when.clone(), t.fields.clone()))
                    .chain(r.template.clone().map(|f| (Default::default(), f)))
                    .enumerate()
                    .map(|(index, (when, fields))| Template {
                        index,
                        when: when
                            .into_iter()
                            .map(|(f, v)| (FieldName::new(&f), v))
                            .collect(),
                        fields: fields
                            .into_iter()
                            .map(|(f, v): (String, Value)| (FieldName::new(&f), v))
                            .collect(),
                    })
                    .collect(),
                initial: r.initial,
                create_contacts: r.create_contacts,
                phone_region: r.e164_region(),
            })
            .collect();
        Relations {
            contacts_connector: config.contacts.connector.clone(),
            contact_preserve: config
                .contacts
                .preserve
                .as_deref()
                .map(names)
                .unwrap_or_else(|| statics(field::preserve(EntityKind::Contact))),
            relations,
            partitions: 1,
        }
    }

    pub fn index_of(&self, code: &str) -> Option<usize> {
        self.relations.iter().position(|r| r.code == code)
    }
}
