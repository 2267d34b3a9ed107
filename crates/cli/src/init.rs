//! `tandem init`: a commented starter config for the chosen connector types, which
//! loads as written (a test runs `tandem check` on it). File connectors get their
//! folders, so the first `tandem check` passes before any data is there.

use std::fmt::Write as _;
use std::fs;
use std::io::ErrorKind;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, anyhow};

use crate::{Cli, print_stdout};

/// Where the contacts live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ContactsType {
    /// A folder of CSV (or JSON Lines) files.
    File,
    /// A CardDAV address book (Radicale, Xandikos, SabreDAV, Nextcloud, ...).
    Carddav,
    /// An LDAP directory (OpenLDAP, 389 Directory Server, ...).
    Ldap,
    /// A connector built as a plugin library.
    Plugin,
}

/// Where the customers, vendors and bank accounts live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AccountsType {
    /// A folder of CSV (or JSON Lines) files.
    File,
    /// A Tryton ERP, over JSON-RPC.
    Tryton,
    /// A connector built as a plugin library.
    Plugin,
}

/// `tandem init [--contacts TYPE] [--accounts TYPE]`.
pub fn init(cli: &Cli, contacts: ContactsType, accounts: AccountsType) -> anyhow::Result<ExitCode> {
    let path = &cli.config;
    let text = starter(contacts, accounts);
    // `create_new`: an existing config is never overwritten, even one made meanwhile.
    let written = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .and_then(|mut file| std::io::Write::write_all(&mut file, text.as_bytes()));
    match written {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {
            return Err(anyhow!(
                "{} exists already; tandem init does not overwrite a config. Move it away, \
                 or give another file with --config",
                path.display()
            ));
        }
        Err(e) => return Err(anyhow!(e).context(format!("cannot write {}", path.display()))),
    }
    let base = path.parent().unwrap_or(Path::new(""));
    let mut folders = Vec::new();
    if contacts == ContactsType::File {
        folders.push("crm");
    }
    if accounts == AccountsType::File {
        folders.push("erp");
    }
    for folder in &folders {
        fs::create_dir_all(base.join(folder))
            .with_context(|| format!("cannot create the folder {}", base.join(folder).display()))?;
    }
    let mut out = format!("Wrote {}", path.display());
    if !folders.is_empty() {
        let _ = write!(out, " and the data folder(s) {}", folders.join(", "));
    }
    out.push_str(
        ".\nNext: edit it (every key is explained in it), then `tandem check`, `tandem plan` \
         and `tandem sync`.\n",
    );
    if cli.json {
        crate::json::print(&serde_json::json!({
            "config": path.display().to_string(),
            "folders": folders,
        }))?;
    } else {
        print_stdout(&out)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The config text: state, the two connectors, contacts, and a customer and a vendor
/// relation with the usual match tiers.
pub fn starter(contacts: ContactsType, accounts: AccountsType) -> String {
    let mut out = String::from(HEADER);
    out.push_str(match contacts {
        ContactsType::File => CONTACTS_FILE,
        ContactsType::Carddav => CONTACTS_CARDDAV,
        ContactsType::Ldap => CONTACTS_LDAP,
        ContactsType::Plugin => CONTACTS_PLUGIN,
    });
    out.push_str(match accounts {
        AccountsType::File => ACCOUNTS_FILE,
        AccountsType::Tryton => ACCOUNTS_TRYTON,
        AccountsType::Plugin => ACCOUNTS_PLUGIN,
    });
    out.push_str(RELATIONS);
    if accounts == AccountsType::Tryton {
        out.push_str(TRYTON_FIELDS);
    }
    if contacts == ContactsType::Ldap {
        out.push_str(LDAP_FIELDS);
    }
    out
}

const HEADER: &str = r#"# Tandem: keeps contacts in step with customers, vendors and bank accounts.
# Written by `tandem init`. Every key: docs/configuration.md. Relative paths resolve
# from this file's folder. Any key can be overridden from the environment as
# TANDEM__SECTION__KEY, and "${NAME}" in a value reads the variable NAME (secrets stay
# out of this file).

[state]
# Links, baselines and the history of runs; one sync at a time per state file.
url = "sqlite://.tandem/state.db"

[sync]
# A full listing that would delete more than this share of a kind's known records stops
# the run before anything is written (R16); `tandem sync --allow-deletes` lets it through.
max_delete_share = 0.5

"#;

const CONTACTS_FILE: &str = r#"# The contacts: a folder with contacts.csv (or .jsonl), one row per contact.
[connectors.crm]
type = "file"
path = "crm"
format = "csv"        # or "jsonl"

"#;

const CONTACTS_CARDDAV: &str = r#"# The contacts: a CardDAV address book collection.
[connectors.crm]
type = "carddav"
url = "http://127.0.0.1:5232/user/contacts/"
username = "user"
password = "${CARDDAV_PASSWORD}"
# token = "${CARDDAV_TOKEN}"   # a bearer token instead of username and password
# ca_file = "ca.pem"           # a private CA for HTTPS

"#;

const CONTACTS_LDAP: &str = r#"# The contacts: person and company entries under a base DN of an LDAP directory
# (docs/connectors/ldap.md).
[connectors.crm]
type = "ldap"
url = "ldap://127.0.0.1:389/"
base_dn = "ou=contacts,dc=example,dc=org"
bind_dn = "cn=tandem,dc=example,dc=org"
password = "${LDAP_PASSWORD}"
# starttls = true     # or an ldaps:// url
# ca_file = "ca.pem"  # a private CA for TLS

"#;

const CONTACTS_PLUGIN: &str = r#"# The contacts: a connector loaded from a plugin library (docs/writing-a-connector.md).
[connectors.crm]
type = "plugin"
path = "plugins/libtandem_crm.so"
settings = {}        # the plugin's own settings

"#;

const ACCOUNTS_FILE: &str = r#"# The accounts: a folder with customers.csv, vendors.csv and bank_accounts.csv.
[connectors.erp]
type = "file"
path = "erp"
format = "csv"

"#;

const ACCOUNTS_TRYTON: &str = r#"# The accounts: a Tryton ERP, over JSON-RPC.
[connectors.erp]
type = "tryton"
url = "http://127.0.0.1:8000/"
database = "tryton"
user = "admin"
password = "${TRYTON_PASSWORD}"
# customer_category = "Customer"   # the party category that makes a customer
# supplier_category = "Supplier"   # ... and a vendor

"#;

const ACCOUNTS_PLUGIN: &str = r#"# The accounts: a connector loaded from a plugin library.
[connectors.erp]
type = "plugin"
path = "plugins/libtandem_erp.so"
settings = {}

"#;

const RELATIONS: &str = r#"[contacts]
connector = "crm"
# preserve = ["email"]   # contact fields sync never overwrites

# One business-relation code per account kind (R1); a kind without one is not synced.
[relations.CUST]
kind = "customer"
connector = "erp"
# Match tiers, tried in order: the first that finds exactly one unlinked record links.
match = [["vat_registration_no"], ["email"], ["name", "post_code"]]
# When both sides changed a field since the last sync: contact_wins, account_wins,
# newest or manual (the pair waits for `tandem conflicts resolve`).
conflict = "contact_wins"
# Every customer without a contact gets a new company contact (R6).
create_contacts = false
# Values for customers created from contacts (R5), where the contact has none.
# template = { language_code = "en" }

[relations.VEND]
kind = "vendor"
connector = "erp"
match = [["vat_registration_no"]]
conflict = "manual"

# [relations.BANK]
# kind = "bank_account"
# connector = "erp"
# match = [["email"]]
"#;

const TRYTON_FIELDS: &str = r#"
# Tryton has no place for name_2, county or the commercial codes: list the fields both
# sides hold in each relation, e.g.
# fields = ["name", "address", "address_2", "city", "post_code", "country_code", "phone",
#           "mobile_phone", "fax", "email", "home_page", "vat_registration_no", "registration_no"]
"#;

const LDAP_FIELDS: &str = r#"
# A directory holds only the fields mapped to attributes (docs/connectors/ldap.md): list
# them in each relation, e.g.
# fields = ["name", "address", "city", "post_code", "country_code", "phone",
#           "mobile_phone", "fax", "email", "home_page"]
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_starter_is_valid_toml_naming_its_types() {
        for contacts in [
            ContactsType::File,
            ContactsType::Carddav,
            ContactsType::Ldap,
            ContactsType::Plugin,
        ] {
            for accounts in [
                AccountsType::File,
                AccountsType::Tryton,
                AccountsType::Plugin,
            ] {
                let text = starter(contacts, accounts);
                let value: toml::Table = toml::from_str(&text)
                    .unwrap_or_else(|e| panic!("{contacts:?}/{accounts:?}: {e}\n{text}"));
                let connectors = value["connectors"].as_table().unwrap();
                let type_of = |name: &str| connectors[name]["type"].as_str().unwrap().to_owned();
                assert_eq!(type_of("crm"), format!("{contacts:?}").to_lowercase());
                assert_eq!(type_of("erp"), format!("{accounts:?}").to_lowercase());
                assert_eq!(
                    value["relations"]["CUST"]["kind"].as_str(),
                    Some("customer")
                );
            }
        }
    }
}
