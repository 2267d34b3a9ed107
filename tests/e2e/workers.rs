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
    wait_until(who, "write", Duration::from_secs(120), |_| {
        files(d) != before
    });
}

/// Waits until `done`, `who` running all along; fails after `within`, naming `what`.
fn wait_until(
    who: &mut Service,
    what: &str,
    within: Duration,
    mut done: impl FnMut(&mut Service) -> bool,
) {
    let started = Instant::now();
    while !done(who) {
        who.assert_running();
        assert!(
            started.elapsed() < within,
            "no {what} within {within:?}:\n{}",
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
    taken_over_once_the_lease_expired(&mut third, "this worker holds the state");

    // The third finishes the work; then the stopped one resumes and stands by again
    // without sending a single write.
    wait_until_settled(&d, &mut third);
    resumed_writes_nothing(&d, &mut second);

    second.stop(Duration::from_secs(60));
    third.stop(Duration::from_secs(60));
    assert_eq!(outcome(&d), outcome(&reference), "as one process alone");
    no_duplicates_or_dangling_links(&d);
}

/// Waits until `taker` logs `took` (it took the lease of a worker stopped just now),
/// and checks that it waited for the lease to expire: renewed every second, the lease
/// had two seconds or more left when the worker stopped.
fn taken_over_once_the_lease_expired(taker: &mut Service, took: &str) {
    let stopped = Instant::now();
    taker.wait_for_log(took, Duration::from_secs(30));
    assert!(
        stopped.elapsed() >= Duration::from_secs(2),
        "taken over only once the stopped worker's lease expired: after {:?}",
        stopped.elapsed()
    );
}

/// Resumes (SIGCONT) a worker stopped past its lease, whose work another finished:
/// it finds out it was taken over, stands by again, and sends no write to any system.
fn resumed_writes_nothing(d: &Deployment, stalled: &mut Service) {
    let settled = (files(d), d.links());
    let before_resuming = stalled.log().len();
    stalled.signal("CONT");
    stalled.wait_for_log("stands by again", Duration::from_secs(30));
    std::thread::sleep(Duration::from_secs(2));
    let resumed = stalled.log()[before_resuming..].to_owned();
    assert!(
        resumed.contains("was taken over by another process"),
        "{resumed}"
    );
    assert_eq!(writes_sent(&resumed), 0, "wrote after resuming:\n{resumed}");
    assert_eq!(
        (files(d), d.links()),
        settled,
        "the resumed worker wrote nothing"
    );
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

/// Partitions are for workers on PostgreSQL: on a SQLite state, or out of range, the
/// config is refused naming the key and what to do.
#[test]
fn partitions_on_a_sqlite_state_or_out_of_range_are_refused() {
    for (partitions, says) in [
        ("2", "needs a state on PostgreSQL"),
        ("0", "from 1 to 64"),
        ("65", "from 1 to 64"),
    ] {
        let d = Deployment::on_sqlite(&crate::support::CONFIG.replace(
            "[state]\n",
            &format!("[state]\npartitions = {partitions}\n"),
        ));
        let out = d.fails(&["check"], 1);
        assert!(out.contains("state.partitions"), "{out}");
        assert!(out.contains(says), "{out}");
    }
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

/// [`config`] with the work cut into two partitions.
fn partitioned_config() -> String {
    config().replace("lease = ", "partitions = 2\nlease = ")
}

/// The reference synced; once the first of `workers` settled `d`, they are stopped,
/// and `d` must hold what one process alone leaves: the same files and links, no
/// duplicate, no dangling link.
fn ends_as_one_process<const N: usize>(
    reference: &Deployment,
    d: &Deployment,
    mut workers: [&mut Service; N],
) {
    reference.sync();
    wait_until_settled(d, workers[0]);
    for worker in &mut workers {
        worker.stop(Duration::from_secs(60));
    }
    assert_eq!(outcome(d), outcome(reference), "as one process alone");
    no_duplicates_or_dangling_links(d);
}

/// Kills (SIGKILL) the worker of partition 0; `taker`, standing by on this host, takes
/// the partition over at once.
fn kill_the_matcher(matcher: &mut Service, taker: &mut Service) {
    matcher.signal("KILL");
    let _ = matcher.wait(Duration::from_secs(10));
    taker.wait_for_log("runs partition 0/2", Duration::from_secs(20));
}

/// [`large`]'s data twice: synced by one process (the reference), and on PostgreSQL
/// cut into two partitions, with the worker of partition 0 started.
fn partitioned(
    server: &tandem_connector_sql::testsupport::PostgresServer,
) -> (Deployment, Deployment, Service) {
    const N: usize = 2_000;
    let reference = large(N);
    reference.sync();
    let d = large_in(
        Deployment::on_postgres(&partitioned_config(), &server.url()),
        N,
    );
    let mut first = worker(&d, &[]);
    first.wait_for_log("runs partition 0/2", Duration::from_secs(60));
    (reference, d, first)
}

/// Waits until `worker` has polled once after this call (`-v` logs each poll): a run
/// in flight now has ended, and every later run begins after now. Polls and runs
/// take turns.
fn polled_after_now(worker: &mut Service) {
    let mark = worker.log().len();
    let polled = |w: &mut Service| w.log()[mark..].contains("polled");
    wait_until(worker, "poll", Duration::from_secs(60), polled);
}

/// The batches of writes a worker sent, in (a part of) its log (`-v`).
fn writes_sent(log: &str) -> usize {
    log.lines().filter(|l| l.contains("sending writes")).count()
}

/// A row of a data file: its cells by column name.
type Row<'a> = Vec<(&'a str, String)>;

/// Adds rows to a data file, their columns named and the others empty, in one
/// replacement of the file: a worker reads it before or after, whole.
fn append_rows(d: &Deployment, file: &str, rows: &[Row]) {
    let mut text = d.read(file);
    let header = text.lines().next().unwrap_or_default().to_owned();
    for cells in rows {
        let row: Vec<&str> = header
            .split(',')
            .map(|column| {
                let cell = cells.iter().find(|(name, _)| *name == column);
                cell.map_or("", |(_, value)| value.as_str())
            })
            .collect();
        text.push_str(&row.join(","));
        text.push('\n');
    }
    d.replace(file, &text);
}

/// `n` customers with a name alone: each is given a new contact.
fn lone_customers(n: usize) -> Vec<Row<'static>> {
    (0..n)
        .map(|i| vec![("id", format!("M{i:06}")), ("name", format!("Lone {i}"))])
        .collect()
}

/// Replaces `from` by `to` in a data file: an edit by the user of every row it touches.
fn edit(d: &Deployment, file: &str, from: &str, to: &str) {
    d.replace(file, &d.read(file).replace(from, to));
}

/// `[state] partitions = 2`: two workers run a partition each and a third stands by.
/// The first sync's links are all new, the matcher's (partition 0); an edit of every
/// customer then touches settled hubs of both partitions, and each worker carries out
/// its own share. The matcher is killed; the standby takes its partition over at once
/// and links what is added next. The systems and links end as one process alone
/// leaves them.
#[test]
fn partitions_share_the_work_and_end_as_one_process_would() {
    let Some(server) = tandem_connector_sql::testsupport::PostgresServer::start() else {
        return;
    };
    let (reference, d, mut first) = partitioned(&server);
    let status = d.ok(&["status"]);
    assert!(status.contains("runs partition 0/2"), "{status}");
    assert!(status.contains("partition 1/2: no worker"), "{status}");
    let mut second = worker(&d, &[]);
    second.wait_for_log("runs partition 1/2", Duration::from_secs(60));
    let mut third = worker(&d, &[]);
    third.wait_for_log("standing by:", Duration::from_secs(60));
    let status = d.ok(&["status"]);
    for shown in ["runs partition 0/2", "runs partition 1/2", "stands by"] {
        assert!(status.contains(shown), "{shown:?} not in {status}");
    }
    assert!(!status.contains("no worker"), "{status}");
    let leases = d.json(&["status"])["leases"].clone();
    let roles: Vec<(&str, &str)> = (leases.as_array().unwrap().iter())
        .map(|l| (l["role"].as_str().unwrap(), l["name"].as_str().unwrap()))
        .filter(|(role, _)| *role == "partition")
        .collect();
    assert_eq!(
        roles,
        [
            ("partition", "partition 0/2"),
            ("partition", "partition 1/2")
        ]
    );
    // A sync beside the workers is refused, naming a partition's worker.
    let out = d.fails(&["sync"], 1);
    assert!(out.contains("lease `partition "), "{out}");
    wait_until_settled(&d, &mut first);

    // Every customer's phone edited: settled hubs, in both partitions.
    let (first_before, second_before) = (first.log().len(), second.log().len());
    for deployment in [&reference, &d] {
        edit(deployment, "erp/customers.csv", ",+32 2 ", ",+32 9 ");
    }
    reference.sync();
    wait_until_settled(&d, &mut first);
    assert_eq!(
        outcome(&d),
        outcome(&reference),
        "the edits carried as by one process"
    );
    let shares = (
        writes_sent(&first.log()[first_before..]),
        writes_sent(&second.log()[second_before..]),
    );
    assert!(
        shares.0 > 0 && shares.1 > 0,
        "both partitions wrote: {shares:?}"
    );

    // The matcher killed: the standby takes partition 0 over at once.
    kill_the_matcher(&mut first, &mut third);
    // Contacts first: alone, they match nothing and nothing is written.
    let (mut contacts, mut customers) = (Vec::new(), lone_customers(50));
    for i in 0..50 {
        let shared = [
            ("name", format!("Late {i}")),
            ("post_code", "1000".into()),
            ("vat_registration_no", format!("LU{i:08}")),
        ];
        let contact = [
            ("id", format!("X{i:06}")),
            ("contact_type", "company".into()),
        ];
        contacts.push([&contact[..], &shared[..]].concat());
        let customer = [
            ("id", format!("L{i:06}")),
            ("phone", format!("+352 {i:06}")),
        ];
        customers.push([&customer[..], &shared[..]].concat());
    }
    for deployment in [&reference, &d] {
        append_rows(deployment, "crm/contacts.csv", &contacts);
    }
    // A run that read the contacts before they were added and the customers after
    // would give the new customers contacts of their own: the customers are added
    // once no run of the matcher's worker began before the contacts were.
    polled_after_now(&mut third);
    for deployment in [&reference, &d] {
        append_rows(deployment, "erp/customers.csv", &customers);
    }
    ends_as_one_process(&reference, &d, [&mut third, &mut second]);
}

/// `[state] partitions = 2`, the worker of partition 1 stopped (SIGSTOP) in the middle
/// of its share of an edit, between its contact updates and its account updates, past
/// its lease: a spare takes the partition over and finishes the share (R18); the
/// stopped worker, resumed, writes nothing and stands by. Then the matcher's worker is
/// killed (SIGKILL) and the resumed one takes partition 0 over. The systems and links
/// end as one process alone leaves them.
#[test]
fn a_partition_stalled_past_its_lease_is_finished_by_a_spare_and_writes_nothing_after() {
    let Some(server) = tandem_connector_sql::testsupport::PostgresServer::start() else {
        return;
    };
    let (reference, d, mut first) = partitioned(&server);
    wait_until_settled(&d, &mut first);

    // Every customer's phone edited, then partition 1's worker starts: its first run
    // carries its share, and stops between the contacts and the customers.
    for deployment in [&reference, &d] {
        edit(deployment, "erp/customers.csv", ",+32 2 ", ",+32 9 ");
    }
    reference.sync();
    let mut second = worker(&d, &[("TANDEM_FAILPOINT", "after_contact_updates:stop")]);
    second.wait_for_log("runs partition 1/2", Duration::from_secs(60));
    second.wait_for_log(
        "failpoint after_contact_updates reached: stopping",
        Duration::from_secs(120),
    );
    assert!(writes_sent(&second.log()) > 0, "{}", second.log());
    let mut third = worker(&d, &[]);
    taken_over_once_the_lease_expired(&mut third, "runs partition 1/2");
    wait_until_settled(&d, &mut first);
    assert_eq!(outcome(&d), outcome(&reference), "the edits carried");
    resumed_writes_nothing(&d, &mut second);

    // The matcher's worker killed: the resumed one, standing by, takes partition 0.
    kill_the_matcher(&mut first, &mut second);
    for deployment in [&reference, &d] {
        append_rows(deployment, "erp/customers.csv", &lone_customers(20));
    }
    ends_as_one_process(&reference, &d, [&mut second, &mut third]);
}

/// Workers with partitions stopped, a `tandem sync` of the whole deployment carries an
/// edit of a customer's phone, and the user then undoes it, restoring the file as it
/// was. The partitions had remembered the customer as it is again: by their hashes
/// alone they saw nothing, and the contact kept the undone phone. A partition whose
/// view another cut of the work ran beside looks at every record again, once.
#[test]
fn partitions_started_again_after_a_whole_sync_see_an_edit_it_carried_undone() {
    let Some(server) = tandem_connector_sql::testsupport::PostgresServer::start() else {
        return;
    };
    let (_, d, mut first) = partitioned(&server);
    let mut second = worker(&d, &[]);
    second.wait_for_log("runs partition 1/2", Duration::from_secs(60));
    second.wait_for_log("sync run", Duration::from_secs(60));
    wait_until_settled(&d, &mut first);
    first.stop(Duration::from_secs(60));
    second.stop(Duration::from_secs(60));

    let phone = || crate::support::cell(&d.read("crm/contacts.csv"), "C000001", "phone");
    let before = d.read("erp/customers.csv");
    edit(&d, "erp/customers.csv", ",+32 2 000001,", ",+32 7 000001,");
    d.sync();
    assert_eq!(phone().as_deref(), Some("+32 7 000001"));
    d.write("erp/customers.csv", &before);

    let mut first = worker(&d, &[]);
    first.wait_for_log("runs partition 0/2", Duration::from_secs(60));
    let mut second = worker(&d, &[]);
    second.wait_for_log("runs partition 1/2", Duration::from_secs(60));
    wait_until_settled(&d, &mut first);
    first.stop(Duration::from_secs(60));
    second.stop(Duration::from_secs(60));
    assert_eq!(phone().as_deref(), Some("+32 2 000001"), "the undo carried");
}
