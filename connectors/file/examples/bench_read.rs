use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use tandem_connector::{Connector, WriteOp};
use tandem_connector_file::{FileConnector, Format};
use tandem_model::{EntityKind, FieldName, Value};

fn main() {
    let mode = std::env::args().nth(1).unwrap_or_default();
    let dir = PathBuf::from("/tmp/tandem-bench");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("contacts.csv");
    if !path.exists() {
        let mut out = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
        writeln!(out, "id,name,first_name,surname,address,city,post_code,country_code,phone,email").unwrap();
        for i in 0..1_000_000u32 {
            writeln!(
                out,
                "C{i:07},Person {i} BV,Ann{i},Surname{i},Main street {i},Gent,{},BE,+32 9 {i:07},ann{i}@example.com",
                9000 + i % 1000
            )
            .unwrap();
        }
    }
    println!("file size {} MB", std::fs::metadata(&path).unwrap().len() / 1_000_000);
    let c = FileConnector::new(dir.clone(), Format::Csv);
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    if mode == "read" || mode.is_empty() {
        for _ in 0..3 {
            let t = Instant::now();
            let page = rt.block_on(c.read(EntityKind::Contact, None)).unwrap();
            println!("read {} records in {:?}", page.records.len(), t.elapsed());
            let t = Instant::now();
            drop(page);
            println!("  drop {:?}", t.elapsed());
        }
    }
    if mode == "write" || mode.is_empty() {
        let t = Instant::now();
        let mut changes = std::collections::BTreeMap::new();
        changes.insert(FieldName::new("city"), Value::text("Brugge"));
        let ops = vec![WriteOp::Update { id: "C0500000".into(), version: None, changes }];
        let out = rt.block_on(c.write(EntityKind::Contact, ops)).unwrap();
        assert!(out[0].is_ok());
        println!("write 1 update into 1M rows in {:?}", t.elapsed());
    }
    if mode == "jsonl" || mode.is_empty() {
        let jpath = dir.join("contacts.jsonl");
        if !jpath.exists() {
            let page = rt.block_on(c.read(EntityKind::Contact, None)).unwrap();
            let mut out = std::io::BufWriter::new(std::fs::File::create(&jpath).unwrap());
            for r in &page.records {
                let mut m = serde_json::to_value(&r.fields).unwrap();
                m.as_object_mut().unwrap().insert("id".into(), r.id.clone().into());
                writeln!(out, "{}", m).unwrap();
            }
        }
        let j = FileConnector::new(dir.clone(), Format::Jsonl);
        let t = Instant::now();
        let page = rt.block_on(j.read(EntityKind::Contact, None)).unwrap();
        println!("jsonl read {} records in {:?}", page.records.len(), t.elapsed());
    }
}
