//! The config resolved into what planning needs: field sets as `FieldName`s, preserve
//! lists filled in from the model's defaults (R8).

use tandem_model::{EntityKind, FieldName, field};

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
    pub initial: InitialSide,
    pub create_contacts: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tier {
    pub fields: Vec<FieldName>,
    pub exact: bool,
}

/// The contact side plus every relation, in config order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relations {
    pub contacts_connector: String,
    /// Shared fields never written into a contact: the contact owns them.
    pub contact_preserve: Vec<FieldName>,
    pub relations: Vec<Relation>,
}

impl Relations {
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
                        exact: t.exact(),
                    })
                    .collect(),
                conflict: r.conflict,
                initial: r.initial,
                create_contacts: r.create_contacts,
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
        }
    }

    pub fn index_of(&self, code: &str) -> Option<usize> {
        self.relations.iter().position(|r| r.code == code)
    }
}
