//! Generated partner data: N contacts on one side and N accounts (customers and
//! vendors) on the other, with shares that match by VAT number, by e-mail, by name and
//! post code, that are ambiguous, and that have no counterpart.

use std::fs;
use std::io::{BufWriter, Write};
use std::path::Path;

/// How the N accounts relate to the contacts, as shares of N (the rest have no
/// counterpart and get a new contact).
#[derive(Debug, Clone, Copy)]
pub struct Shares {
    pub vat: f64,
    pub email: f64,
    pub name_post_code: f64,
    pub ambiguous: f64,
}

impl Default for Shares {
    fn default() -> Shares {
        Shares {
            vat: 0.4,
            email: 0.25,
            name_post_code: 0.15,
            ambiguous: 0.02,
        }
    }
}

/// A small deterministic generator (xorshift), so a data set is the same every time.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[(self.next() % items.len() as u64) as usize]
    }
}

const STREETS: &[&str] = &[
    "Kerkstraat",
    "Stationsplein",
    "Industrieweg",
    "Rue Haute",
    "Hauptstraße",
    "Marktplein",
];
const CITIES: &[(&str, &str, &str)] = &[
    ("Gent", "9000", "BE"),
    ("Antwerpen", "2000", "BE"),
    ("Bruxelles", "1000", "BE"),
    ("Utrecht", "3511", "NL"),
    ("Hamburg", "20457", "DE"),
    ("Lille", "59000", "FR"),
];
const WORDS: &[&str] = &[
    "Acme",
    "Nordwind",
    "Orbit",
    "Papyrus",
    "Green Leaf",
    "Delta",
    "Brightline",
    "Vertex",
];
const FORMS: &[&str] = &["NV", "BV", "GmbH", "SA", "Ltd"];

/// Writes `dir/crm/contacts.csv`, `dir/erp/customers.csv`, `dir/erp/vendors.csv` and a
/// `dir/tandem.toml` that syncs them (CUST and VEND, create_contacts on both).
pub fn generate(dir: &Path, n: usize, shares: Shares) -> anyhow::Result<()> {
    fs::create_dir_all(dir.join("crm"))?;
    fs::create_dir_all(dir.join("erp"))?;
    let mut contacts = BufWriter::new(fs::File::create(dir.join("crm/contacts.csv"))?);
    let mut customers = BufWriter::new(fs::File::create(dir.join("erp/customers.csv"))?);
    let mut vendors = BufWriter::new(fs::File::create(dir.join("erp/vendors.csv"))?);
    let header = "name,address,city,post_code,country_code,phone,email,vat_registration_no";
    writeln!(contacts, "id,contact_type,{header}")?;
    writeln!(customers, "id,{header},payment_terms")?;
    writeln!(vendors, "id,{header},payment_terms")?;
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let cut = |share: f64| (share * n as f64) as usize;
    let (vat, email, name) = (
        cut(shares.vat),
        cut(shares.email),
        cut(shares.name_post_code),
    );
    let ambiguous = cut(shares.ambiguous);
    for i in 0..n {
        let (city, post, country) = CITIES[i % CITIES.len()];
        let name_text = format!("{} {} {i}", rng.pick(WORDS), rng.pick(FORMS));
        let street = format!("{} {}", rng.pick(STREETS), 1 + rng.next() % 200);
        let phone = format!(
            "+32 9 {:03} {:02} {:02}",
            i % 1000,
            (i / 1000) % 100,
            rng.next() % 100
        );
        let mail = format!("info{i}@firm{}.example", i % 9973);
        let vat_no = format!("{country}{:010}", i);
        // The contact: every contact exists; how its account finds it depends on i.
        let (c_email, c_vat) = if i < vat {
            ("", vat_no.as_str())
        } else if i < vat + email + ambiguous {
            (mail.as_str(), "")
        } else {
            ("", "")
        };
        writeln!(
            contacts,
            "C{i:08},company,{name_text},{street},{city},{post},{country},{phone},{c_email},{c_vat}"
        )?;
        // Its account, edited a little on the ERP side.
        let (a_name, a_email, a_vat) = if i < vat {
            (name_text.to_uppercase(), String::new(), vat_no.clone())
        } else if i < vat + email {
            (name_text.clone(), mail.to_uppercase(), String::new())
        } else if i < vat + email + ambiguous {
            // Two accounts share this e-mail: ambiguous, reported, never guessed.
            let twin = vat + email + ((i - vat - email) / 2) * 2;
            (
                name_text.clone(),
                format!("info{twin}@firm{}.example", twin % 9973),
                String::new(),
            )
        } else if i < vat + email + ambiguous + name {
            (name_text.to_lowercase(), String::new(), String::new())
        } else {
            (
                format!("{} Other {i}", rng.pick(WORDS)),
                String::new(),
                String::new(),
            )
        };
        let (a_post, a_city) = if i < vat + email + ambiguous + name {
            (post, city)
        } else {
            ("0000", "Elsewhere")
        };
        let out = if i % 4 == 3 {
            &mut vendors
        } else {
            &mut customers
        };
        let prefix = if i % 4 == 3 { 'V' } else { 'K' };
        writeln!(
            out,
            "{prefix}{i:08},{a_name},{street},{a_city},{a_post},{country},{phone},{a_email},{a_vat},30D"
        )?;
    }
    contacts.flush()?;
    customers.flush()?;
    vendors.flush()?;
    fs::write(dir.join("tandem.toml"), CONFIG)?;
    Ok(())
}

/// Puts the rows of each file `generate` wrote into `dir` in a random order, the same
/// every time (the header stays first): a listing that comes in no order of ids, as
/// an export sorted by name or by date would.
pub fn shuffle_rows(dir: &Path) -> anyhow::Result<()> {
    let mut rng = Rng(0x5eed_1234_abcd_0002);
    for file in ["crm/contacts.csv", "erp/customers.csv", "erp/vendors.csv"] {
        let path = dir.join(file);
        let text = fs::read_to_string(&path)?;
        let mut lines = text.lines();
        let header = lines.next().unwrap_or_default();
        let mut rows: Vec<&str> = lines.collect();
        // Fisher-Yates.
        for i in (1..rows.len()).rev() {
            let j = (rng.next() % (i as u64 + 1)) as usize;
            rows.swap(i, j);
        }
        let mut out = BufWriter::new(fs::File::create(&path)?);
        writeln!(out, "{header}")?;
        for row in rows {
            writeln!(out, "{row}")?;
        }
        out.flush()?;
    }
    Ok(())
}

pub const CONFIG: &str = r#"[state]
url = "sqlite://.tandem/state.db"

[connectors.crm]
type = "file"
path = "crm"

[connectors.erp]
type = "file"
path = "erp"

[contacts]
connector = "crm"

[relations.CUST]
kind = "customer"
connector = "erp"
create_contacts = true
match = [["vat_registration_no"], ["email"], ["name", "post_code"]]

[relations.VEND]
kind = "vendor"
connector = "erp"
create_contacts = true
match = [["vat_registration_no"], ["email"], ["name", "post_code"]]
"#;

#[cfg(test)]
mod tests {
    use super::*;

    fn rows_of(dir: &Path, file: &str) -> Vec<String> {
        let text = fs::read_to_string(dir.join(file)).unwrap();
        text.lines().map(str::to_owned).collect()
    }

    /// Shuffled, each file keeps its header first and every row once, in another
    /// order, the same every time.
    #[test]
    fn shuffled_files_hold_the_same_rows_in_a_fixed_other_order() {
        let (by_id, shuffled, again) = (
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
        );
        for dir in [&by_id, &shuffled, &again] {
            generate(dir.path(), 400, Shares::default()).unwrap();
        }
        shuffle_rows(shuffled.path()).unwrap();
        shuffle_rows(again.path()).unwrap();
        for file in ["crm/contacts.csv", "erp/customers.csv", "erp/vendors.csv"] {
            let (original, mixed) = (rows_of(by_id.path(), file), rows_of(shuffled.path(), file));
            assert_eq!(mixed[0], original[0], "{file}: the header moved");
            assert_ne!(mixed, original, "{file}: not shuffled");
            let sorted = |rows: &[String]| {
                let mut rows = rows.to_vec();
                rows.sort();
                rows
            };
            assert_eq!(
                sorted(&mixed),
                sorted(&original),
                "{file}: rows lost or added"
            );
            assert_eq!(
                mixed,
                rows_of(again.path(), file),
                "{file}: not the same order"
            );
        }
    }
}
