//! What the engine needs to know about a deployment: where the contacts are and which
//! business relations to keep (R1). The `tandem` binary reads these from `tandem.toml`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tandem_model::{EntityKind, PhoneRegion, Value, field};

/// The contact side.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContactsConfig {
    /// The connector (by its name under `[connectors]`) that holds the contacts.
    pub connector: String,
    /// Contact fields that sync never overwrites (replaces the default, empty list).
    #[serde(default)]
    pub preserve: Option<Vec<String>>,
}

/// One business relation: a code and the kind of account it stands for (R1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelationConfig {
    /// The account kind this code stands for.
    pub kind: EntityKind,
    /// The connector (by its name under `[connectors]`) that holds these accounts.
    pub connector: String,
    /// Give every account without a contact a new company contact (R6).
    #[serde(default)]
    pub create_contacts: bool,
    /// Match tiers tried in order to link existing records (R4), e.g.
    /// `[["vat_registration_no"], ["email"], ["name", "post_code"]]`.
    #[serde(default, rename = "match")]
    pub match_tiers: Vec<MatchTier>,
    /// Who wins when both sides changed the same field (R15).
    #[serde(default)]
    pub conflict: ConflictPolicy,
    /// Per-field exceptions to `conflict`, e.g. `{ phone = "account_wins" }`.
    #[serde(default)]
    pub conflict_fields: BTreeMap<String, ConflictPolicy>,
    /// Values for fields the contact does not carry, set on accounts created from a
    /// contact (R5); shorthand for a last `templates` rule without conditions.
    #[serde(default)]
    pub template: Option<BTreeMap<String, Value>>,
    /// Templates chosen by rules on the contact, first match wins (R5).
    #[serde(default)]
    pub templates: Vec<TemplateRule>,
    /// Which side's values a new link starts from (R4).
    #[serde(default)]
    pub initial: InitialSide,
    /// The shared fields of this relation; defaults to the kind's shared set (R8).
    #[serde(default)]
    pub fields: Option<Vec<String>>,
    /// Account fields sync never overwrites; defaults to the kind's preserve list (R8).
    #[serde(default)]
    pub preserve: Option<Vec<String>>,
    /// Phone numbers compared as E.164 in matching and merging (R20); needs
    /// `phone_region`.
    #[serde(default)]
    pub match_normalise: Option<MatchNormalise>,
    /// The region national phone numbers are read in (`BE`), for `match_normalise`.
    #[serde(default)]
    pub phone_region: Option<PhoneRegion>,
}

impl RelationConfig {
    /// A relation with every optional setting at its default.
    pub fn new(kind: EntityKind, connector: &str) -> RelationConfig {
        RelationConfig {
            kind,
            connector: connector.to_owned(),
            create_contacts: false,
            match_tiers: Vec::new(),
            conflict: ConflictPolicy::default(),
            conflict_fields: BTreeMap::new(),
            template: None,
            templates: Vec::new(),
            initial: InitialSide::default(),
            fields: None,
            preserve: None,
            match_normalise: None,
            phone_region: None,
        }
    }

    /// The region phone numbers are compared in as E.164, when the relation asks.
    pub fn e164_region(&self) -> Option<PhoneRegion> {
        match self.match_normalise {
            Some(MatchNormalise::E164) => self.phone_region,
            None => None,
        }
    }
}

/// Normalisations a relation turns on beyond the ones every field has (R20).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MatchNormalise {
    /// Phone, mobile and fax numbers as E.164, national ones read in `phone_region`.
    E164,
}

/// A template chosen when every `when` field of the contact equals the given value
/// (trimmed, case-insensitive), e.g. `{ when = { country_code = "BE" }, fields = {
/// x_payment_terms = "30D" } }`. `contact_type` is `company` or `person`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateRule {
    #[serde(default)]
    pub when: BTreeMap<String, String>,
    pub fields: BTreeMap<String, Value>,
}

/// A match tier: fields that must all be filled and equal on both sides.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum MatchTier {
    /// `["email"]`: compared trimmed and case-insensitively.
    Fields(Vec<String>),
    /// `{ fields = ["iban"], exact = true }`: `exact` compares byte for byte.
    Rule {
        fields: Vec<String>,
        #[serde(default)]
        exact: bool,
    },
}

impl MatchTier {
    pub fn fields(&self) -> &[String] {
        match self {
            MatchTier::Fields(fields) | MatchTier::Rule { fields, .. } => fields,
        }
    }

    pub fn exact(&self) -> bool {
        matches!(self, MatchTier::Rule { exact: true, .. })
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConflictPolicy {
    /// The contact's value wins.
    #[default]
    ContactWins,
    /// The account's value wins.
    AccountWins,
    /// The side modified last wins (by each record's modification time); the contact
    /// when a time is missing or equal.
    Newest,
    /// Nobody wins: the field waits in the conflict queue for `tandem conflicts
    /// resolve`; the pair's other fields go on synchronising.
    Manual,
}

impl ConflictPolicy {
    /// As the config spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            ConflictPolicy::ContactWins => "contact_wins",
            ConflictPolicy::AccountWins => "account_wins",
            ConflictPolicy::Newest => "newest",
            ConflictPolicy::Manual => "manual",
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InitialSide {
    #[default]
    Contact,
    Account,
}

/// Everything the engine needs, validated by [`SyncConfig::new`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncConfig {
    pub contacts: ContactsConfig,
    /// Relations by code, in config order.
    pub relations: Vec<(String, RelationConfig)>,
}

/// A config mistake, with the config key it concerns.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct ConfigError {
    pub key: String,
    pub message: String,
}

impl SyncConfig {
    /// Checks what types cannot: codes, field names, one code per account kind and
    /// connector.
    pub fn new(
        contacts: ContactsConfig,
        relations: BTreeMap<String, RelationConfig>,
    ) -> Result<SyncConfig, ConfigError> {
        let err = |key: String, message: String| Err(ConfigError { key, message });
        if let Some(preserve) = &contacts.preserve {
            check_fields(EntityKind::Contact, preserve, "contacts.preserve")?;
        }
        let mut seen: BTreeMap<(EntityKind, &str), &str> = BTreeMap::new();
        for (code, relation) in &relations {
            let key = format!("relations.{code}");
            if code.is_empty()
                || !code
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                return err(key, "a relation code is letters, digits, `_` or `-`".into());
            }
            if relation.kind == EntityKind::Contact {
                return err(
                    format!("{key}.kind"),
                    "a relation links contacts to accounts: use customer, vendor or bank_account"
                        .into(),
                );
            }
            if let Some(other) = seen.insert((relation.kind, relation.connector.as_str()), code) {
                return err(
                    key,
                    format!(
                        "{}s on connector `{}` already belong to relation `{other}`; one code per kind and connector",
                        relation.kind, relation.connector
                    ),
                );
            }
            for (i, tier) in relation.match_tiers.iter().enumerate() {
                if tier.fields().is_empty() {
                    return err(
                        format!("{key}.match[{i}]"),
                        "a match tier needs at least one field".into(),
                    );
                }
                check_fields(relation.kind, tier.fields(), &format!("{key}.match[{i}]"))?;
            }
            if let Some(fields) = &relation.fields {
                check_fields(relation.kind, fields, &format!("{key}.fields"))?;
                for f in fields {
                    if !field::is_canonical_for(EntityKind::Contact, f) && !field::is_extra(f) {
                        return err(
                            format!("{key}.fields"),
                            format!("contacts have no field `{f}`"),
                        );
                    }
                }
            }
            if let Some(preserve) = &relation.preserve {
                check_fields(relation.kind, preserve, &format!("{key}.preserve"))?;
            }
            let fields: Vec<String> = relation.conflict_fields.keys().cloned().collect();
            check_fields(relation.kind, &fields, &format!("{key}.conflict_fields"))?;
            for (i, rule) in relation.templates.iter().enumerate() {
                let fields: Vec<String> = rule.fields.keys().cloned().collect();
                check_fields(
                    relation.kind,
                    &fields,
                    &format!("{key}.templates[{i}].fields"),
                )?;
                let when: Vec<String> = rule.when.keys().cloned().collect();
                check_fields(
                    EntityKind::Contact,
                    &when,
                    &format!("{key}.templates[{i}].when"),
                )?;
            }
            check_normalise(relation, &key)?;
            if let Some(template) = &relation.template {
                let fields: Vec<String> = template.keys().cloned().collect();
                check_fields(relation.kind, &fields, &format!("{key}.template"))?;
            }
        }
        Ok(SyncConfig {
            contacts,
            relations: relations.into_iter().collect(),
        })
    }
}

/// `match_normalise = "e164"` and `phone_region` come together: national numbers are
/// read in a region, and a region alone would change nothing.
fn check_normalise(relation: &RelationConfig, key: &str) -> Result<(), ConfigError> {
    let message = match (relation.match_normalise, relation.phone_region) {
        (Some(MatchNormalise::E164), None) => {
            "`match_normalise = \"e164\"` reads national numbers in a region: set \
             `phone_region`, e.g. \"BE\""
        }
        (None, Some(_)) => {
            "`phone_region` is used by `match_normalise = \"e164\"` only; set both or neither"
        }
        _ => return Ok(()),
    };
    Err(ConfigError {
        key: format!("{key}.phone_region"),
        message: message.into(),
    })
}

fn check_fields(kind: EntityKind, fields: &[String], key: &str) -> Result<(), ConfigError> {
    for f in fields {
        if !field::is_canonical_for(kind, f) && !field::is_extra(f) {
            return Err(ConfigError {
                key: key.to_owned(),
                message: format!(
                    "`{f}` is not a field of {}s; use a canonical field name (see docs) or an extra `x_<name>`",
                    kind
                ),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn relation(kind: EntityKind, connector: &str) -> RelationConfig {
        RelationConfig::new(kind, connector)
    }

    fn contacts() -> ContactsConfig {
        ContactsConfig {
            connector: "crm".into(),
            preserve: None,
        }
    }

    #[test]
    fn r1_one_code_per_kind_and_connector() {
        let mut relations = BTreeMap::new();
        relations.insert("CUST".into(), relation(EntityKind::Customer, "erp"));
        relations.insert("CUST2".into(), relation(EntityKind::Customer, "erp"));
        let e = SyncConfig::new(contacts(), relations).unwrap_err();
        assert_eq!(e.key, "relations.CUST2");
        assert!(
            e.message.contains("already belong to relation `CUST`"),
            "{e}"
        );
    }

    #[test]
    fn unknown_match_field_is_named() {
        let mut relations = BTreeMap::new();
        let mut r = relation(EntityKind::BankAccount, "erp");
        r.match_tiers = vec![MatchTier::Fields(vec!["vat_number".into()])];
        relations.insert("BANK".into(), r);
        let e = SyncConfig::new(contacts(), relations).unwrap_err();
        assert_eq!(e.key, "relations.BANK.match[0]");
        assert!(
            e.to_string()
                .contains("`vat_number` is not a field of bank_accounts"),
            "{e}"
        );
    }

    #[test]
    fn r20_e164_needs_a_phone_region() {
        let mut r = relation(EntityKind::Customer, "erp");
        r.match_normalise = Some(MatchNormalise::E164);
        let relations = BTreeMap::from([("CUST".to_string(), r.clone())]);
        let e = SyncConfig::new(contacts(), relations).unwrap_err();
        assert_eq!(e.key, "relations.CUST.phone_region");
        r.phone_region = Some("BE".parse().unwrap());
        assert_eq!(r.e164_region(), "BE".parse().ok());
        let relations = BTreeMap::from([("CUST".to_string(), r)]);
        assert!(SyncConfig::new(contacts(), relations).is_ok());
    }

    #[test]
    fn r20_normalise_keys_parse_and_name_a_bad_region() {
        let r: RelationConfig = serde_json::from_str(
            r#"{"kind": "customer", "connector": "erp", "match_normalise": "e164", "phone_region": "be"}"#,
        )
        .unwrap();
        assert_eq!(
            r.e164_region().map(|p| p.to_string()).as_deref(),
            Some("BE")
        );
        let e = serde_json::from_str::<RelationConfig>(
            r#"{"kind": "customer", "connector": "erp", "phone_region": "Belgium"}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("`Belgium` is not a region"), "{e}");
    }

    #[test]
    fn tiers_parse_in_both_forms() {
        let tiers: Vec<MatchTier> =
            serde_json::from_str(r#"[["email"], {"fields": ["iban"], "exact": true}]"#).unwrap();
        assert_eq!(tiers[0].fields(), ["email".to_string()]);
        assert!(!tiers[0].exact());
        assert!(tiers[1].exact());
    }
}
