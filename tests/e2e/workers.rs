//! `tandem run --worker`: three workers share one PostgreSQL state. The one syncing
//! is killed (SIGKILL) in the middle of a large first run; the one that takes over is
//! stopped (SIGSTOP) in the middle of its run, past its lease, and resumed after the
//! third took over. The systems and links end as one process alone leaves them: no
//! duplicate, no lost update, no dangling link, and the stopped worker writes nothing
//! once it resumes.

use std::time::{Duration, Instant};

use crate::service::{LARGE_CONFIG, Service, large, large_in, last_run_status, outcome};
use crate::support::Deployment;

/// Short, so that the stalled worker is taken over within seconds (renewed every
/// second).
const LEASE: &str = "3s";

/// The first large run takes several seconds on two cores.
const PARTNERS: usize = 12_000;

/// Data files, in the order a first run writes them.
const FILES: [&str; 3] = ["crm/contacts.csv", "erp/customers.csv", "erp/vendors.csv"];

fn files(d: &Deployment) -> Vec<String> {
    FILES.iter().map(|f| d.read(f)).collect()
}

/// Starts a worker, its every write to a system logged (`-v`).
fn worker(d: &Deployment, env: &[(&str, &str)]) -> Service {
    Service::start_with(d, &["-v", "run", "--worker"], env)
}

/// Waits until some data file differs from `before`: the worker holding the state is
/// in the middle of its run, between two writes.
fn wait_for_a_write(d: &Deployment, before: &[String], who: &mut Service) {
    let started = Instant::now();
    while files(d) == before {
        who.assert_running();
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no write within 120 s:\n{}",
            who.log()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The worker config: [`LARGE_CONFIG`] with a short lease and quick polls.
fn config() -> String {
    LARGE_CONFIG.replace(
        "[state]\nurl = \"sqlite://.tandem/state.db\"",
        &format!("[state]\nurl = \"sqlite://.tandem/state.db\"\nlease = \"{LEASE}\""),
    )
}

#[test]
fn workers_take_over_from_a_killed_and_a_stalled_worker_and_end_as_one_process_would() {
    let Some(server) = tandem_connector_sql::testsupport::PostgresServer::start() else {
        return;
    };
    let reference = large(PARTNERS);
    reference.sync();
    let d = large_in(Deployment::on_postgres(&config(), &server.url()), PARTNERS);

    let mut first = worker(&d, &[]);
    first.wait_for_log("this worker holds the state", Duration::from_secs(60));
    // The second stalls between its contact updates and its account updates: two
    // writes to systems with no write to the state between them.
    let mut second = worker(&d, &[("TANDEM_FAILPOINT", "after_contact_updates:stop")]);
    second.wait_for_log("standing by:", Duration::from_secs(60));

    // Killed between two writes of its first run. It died on this host: its lease is
    // taken at once, not after it expires.
    let untouched = files(&d);
    wait_for_a_write(&d, &untouched, &mut first);
    first.signal("KILL");
    let _ = first.wait(Duration::from_secs(10));
    let killed = Instant::now();
    second.wait_for_log("this worker holds the state", Duration::from_secs(20));
    assert!(killed.elapsed() < Duration::from_secs(3), "taken at once");
    let mut third = worker(&d, &[]);

    second.wait_for_log(
        "failpoint after_contact_updates reached: stopping",
        Duration::from_secs(120),
    );
    let stopped = Instant::now();
    third.wait_for_log("this worker holds the state", Duration::from_secs(30));
    // Renewed every second, the lease had two seconds or more left when it stopped.
    assert!(
        stopped.elapsed() >= Duration::from_secs(2),
        "taken over only once the stopped worker's lease expired: after {:?}",
        stopped.elapsed()
    );

    // The third finishes the work; then the stopped one resumes and stands by again
    // without sending a single write.
    wait_until_settled(&d, &mut third);
    let settled = (files(&d), d.links());
    let before_resuming = second.log().len();
    second.signal("CONT");
    second.wait_for_log("stands by again", Duration::from_secs(30));
    std::thread::sleep(Duration::from_secs(2));
    let resumed = second.log()[before_resuming..].to_owned();
    assert!(
        resumed.contains("was taken over by another process"),
        "{resumed}"
    );
    assert!(
        !resumed.contains("sending writes"),
        "wrote after resuming:\n{resumed}"
    );
    assert_eq!(
        (files(&d), d.links()),
        settled,
        "the resumed worker wrote nothing"
    );

    second.stop(Duration::from_secs(60));
    third.stop(Duration::from_secs(60));
    assert_eq!(outcome(&d), outcome(&reference), "as one process alone");
    no_duplicates_or_dangling_links(&d);
}

/// Waits until the holder's last run is done and a plan has nothing left to do.
fn wait_until_settled(d: &Deployment, holder: &mut Service) {
    let started = Instant::now();
    loop {
        holder.assert_running();
        let plan = d.json(&["plan"]);
        if plan["writes"] == 0 && last_run_status(d) == "ok" {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "not settled within 180 s: {plan}\n{}",
            holder.log()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Every account has one contact per relation, every contact one account per
/// relation, and every link joins two records that exist.
fn no_duplicates_or_dangling_links(d: &Deployment) {
    use std::collections::HashSet;
    let links = d.links();
    let ids = |file: &str| -> HashSet<String> {
        crate::support::rows(&d.read(file))
            .into_iter()
            .map(|row| row["id"].clone())
            .collect()
    };
    let (contacts, customers, vendors) = (
        ids("crm/contacts.csv"),
        ids("erp/customers.csv"),
        ids("erp/vendors.csv"),
    );
    let mut accounts = HashSet::new();
    let mut hubs = HashSet::new();
    for (code, contact, account) in &links {
        assert!(contacts.contains(contact), "dangling link to {contact}");
        let held = if code == "CUST" { &customers } else { &vendors };
        assert!(held.contains(account), "dangling link to {account}");
        assert!(accounts.insert((code, account)), "{account} linked twice");
        assert!(hubs.insert((code, contact)), "{contact} linked twice");
    }
    assert_eq!(
        accounts.len(),
        customers.len() + vendors.len(),
        "all linked"
    );
    let names: Vec<String> = crate::support::rows(&d.read("crm/contacts.csv"))
        .into_iter()
        .map(|row| row["name"].clone())
        .collect();
    let distinct: HashSet<&String> = names.iter().collect();
    assert_eq!(distinct.len(), names.len(), "no contact created twice");
}

/// Workers share their state through a database: on a SQLite state `--worker` is
/// refused at once, naming the key and what to do, and nothing is created.
#[test]
fn a_worker_on_a_sqlite_state_is_refused_with_what_to_do() {
    let d = Deployment::on_sqlite(crate::support::CONFIG);
    let out = d.fails(&["run", "--worker"], 1);
    assert!(out.contains("state.url"), "{out}");
    assert!(out.contains("needs a state on PostgreSQL"), "{out}");
    assert!(out.contains("tandem migrate"), "{out}");
    assert!(!d.state_exists(), "no state created");
}

/// A lease shorter than three renewals of a second is a config mistake.
#[test]
fn a_lease_under_three_seconds_is_refused() {
    let d = Deployment::on_sqlite(
        &crate::support::CONFIG.replace("[state]\n", "[state]\nlease = \"1s\"\n"),
    );
    let out = d.fails(&["check"], 1);
    assert!(out.contains("state.lease"), "{out}");
    assert!(out.contains("at least 3s"), "{out}");
}
