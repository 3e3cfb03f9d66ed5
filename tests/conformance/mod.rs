//! One behaviour suite for every [`Source`] kind (in the spirit of rclone's
//! fstest): each source's test file builds a [`Fixture`] (a server plus a way
//! to reach its inbox on disk) and calls [`run_all`] (or the subset it
//! supports). Every case works in its own inbox folder, so the cases do not
//! see each other's files.
#![allow(dead_code)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Duration;

pub mod host_keys;
pub mod http;

use milebatch::source::{After, Pickup, Ready, RemoteFile, Source, SourceError};

/// A server (or folder) under test.
pub trait Fixture {
    /// A source whose inbox is the folder `inbox` (a plain name) under the
    /// server's root, connected.
    fn source(&self, inbox: &str) -> Box<dyn Source>;
    /// Where that folder is on this machine's disk.
    fn inbox_path(&self, inbox: &str) -> PathBuf;
    /// Owner to give files and folders the test creates (the server's login
    /// user), if any.
    fn owner(&self) -> Option<(u32, u32)> {
        None
    }
}

/// Make the inbox folder (empty) and return its path.
pub fn fresh_inbox(fx: &dyn Fixture, inbox: &str) -> PathBuf {
    let p = fx.inbox_path(inbox);
    let _ = fs::remove_dir_all(&p);
    fs::create_dir_all(&p).unwrap();
    chown(fx, &p);
    fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
    p
}

fn chown(fx: &dyn Fixture, p: &Path) {
    if let Some((u, g)) = fx.owner() {
        std::os::unix::fs::lchown(p, Some(u), Some(g)).unwrap();
    }
}

/// Put a file into a folder as the partner would (owned by the login user).
pub fn put(fx: &dyn Fixture, dir: &Path, name: &str, data: &[u8]) -> PathBuf {
    let p = dir.join(name);
    fs::write(&p, data).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
    chown(fx, &p);
    p
}

/// Bytes that are not text-clean: CR, LF, NUL and high bytes, so that an
/// ASCII-mode transfer or a text conversion would show.
pub fn payload(len: usize, seed: u8) -> Vec<u8> {
    let mut v = Vec::with_capacity(len);
    let mut x: u32 = 0x9E37_79B9 ^ u32::from(seed);
    for i in 0..len {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        v.push(match i % 7 {
            0 => b'\n',
            3 => b'\r',
            _ => x as u8,
        });
    }
    v
}

fn names(list: &[RemoteFile]) -> Vec<&str> {
    list.iter().map(|f| f.name.as_str()).collect()
}

fn find<'a>(list: &'a [RemoteFile], name: &str) -> &'a RemoteFile {
    list.iter()
        .find(|f| f.name == name)
        .unwrap_or_else(|| panic!("{name} not in listing {:?}", names(list)))
}

/// The pickup options the suite and the source test files use.
pub fn test_pickup(retries: u32) -> Pickup {
    Pickup {
        pattern: glob::Pattern::new("*.csv").unwrap(),
        pattern_case_sensitive: false,
        max_size: 1 << 30,
        trust_mtime: true,
        ready: Ready::Immediate,
        after: After::Move("processed".into()),
        move_failed: Some("failed".into()),
        errors_dir: Some("errors".into()),
        ignore: vec![],
        timeout: Duration::from_secs(5),
        retries,
    }
}

fn pickup() -> Pickup {
    test_pickup(0)
}

/// Regular files only, with their sizes; folders and symlinks are not files.
pub fn listing(fx: &dyn Fixture) {
    let dir = fresh_inbox(fx, "listing");
    put(fx, &dir, "a.csv", &payload(1000, 1));
    put(fx, &dir, "b.csv", b"x");
    put(fx, &dir, "b.csv.done", b"");
    put(fx, &dir, "notes.txt", b"hello");
    fs::create_dir(dir.join("sub.csv")).unwrap();
    chown(fx, &dir.join("sub.csv"));
    put(fx, &dir.join("sub.csv"), "inner.csv", b"inner");
    std::os::unix::fs::symlink("a.csv", dir.join("link.csv")).unwrap();
    chown(fx, &dir.join("link.csv"));
    std::os::unix::fs::symlink("/etc/passwd", dir.join("passwd.csv")).unwrap();
    chown(fx, &dir.join("passwd.csv"));

    let mut src = fx.source("listing");
    let list = src.list().expect("list");
    let mut got = names(&list);
    got.sort();
    assert_eq!(
        got,
        ["a.csv", "b.csv", "b.csv.done", "notes.txt"],
        "{list:?}"
    );
    assert_eq!(find(&list, "a.csv").size, 1000);
    assert_eq!(find(&list, "b.csv").size, 1);
    assert_eq!(find(&list, "b.csv.done").size, 0);
    let now = chrono::Utc::now().timestamp();
    if let Some(m) = find(&list, "a.csv").mtime {
        assert!(
            (m - now).abs() < 24 * 3600,
            "mtime {m} is not about now ({now})"
        );
    }

    // An empty inbox lists as empty.
    fresh_inbox(fx, "listing-empty");
    let mut src = fx.source("listing-empty");
    assert!(src.list().expect("list empty").is_empty());
}

/// A name that must never reach a path is listed as the server sent it, and
/// the pipeline's pickup leaves it alone.
pub fn unsafe_names_are_skipped(fx: &dyn Fixture) {
    let dir = fresh_inbox(fx, "unsafe");
    put(fx, &dir, "ok.csv", b"1");
    put(fx, &dir, "a\\b.csv", b"2");
    let mut src = fx.source("unsafe");
    let list = src.list().expect("list");
    assert!(
        names(&list).contains(&"a\\b.csv"),
        "the raw name should be listed: {list:?}"
    );
    let db = tempfile::tempdir().unwrap();
    let conn = milebatch::db::open(&db.path().join("t.sqlite")).unwrap();
    let stop = AtomicBool::new(false);
    let c = milebatch::pipeline::pickup::candidates(
        src.as_mut(),
        &pickup(),
        &conn,
        "p",
        chrono::Utc::now(),
        &stop,
    )
    .expect("candidates");
    assert_eq!(names(&c.ready), ["ok.csv"]);
    // Not silently: the unsafe name is a skip that needs a human.
    assert_eq!(c.skipped.len(), 1, "{:?}", c.skipped);
    assert_eq!(c.skipped[0].name, "a\\b.csv");
    assert_eq!(
        c.skipped[0].reason,
        milebatch::pipeline::pickup::SkipReason::UnsafeName
    );
    assert!(c.skipped[0].action_needed);
}

/// Bytes arrive identical; a size that does not match the listing is an
/// error, and one worth retrying.
pub fn fetch(fx: &dyn Fixture) {
    let dir = fresh_inbox(fx, "fetch");
    let data = payload(300_000, 2);
    put(fx, &dir, "big.csv", &data);
    put(fx, &dir, "empty.csv", b"");
    let mut src = fx.source("fetch");
    let list = src.list().expect("list");
    let out = tempfile::tempdir().unwrap();

    let dest = out.path().join("big");
    src.fetch(find(&list, "big.csv"), &dest).expect("fetch");
    assert!(fs::read(&dest).unwrap() == data, "downloaded bytes differ");

    let dest = out.path().join("empty");
    src.fetch(find(&list, "empty.csv"), &dest)
        .expect("fetch empty");
    assert_eq!(fs::read(&dest).unwrap(), b"");

    // The file changed size since the listing.
    let mut stale = find(&list, "big.csv").clone();
    stale.size += 10;
    let e = src
        .fetch(&stale, &out.path().join("stale"))
        .expect_err("a size mismatch must be an error");
    assert!(e.retryable(), "size mismatch should be Transient: {e:?}");

    // The source is still usable after an error.
    let dest = out.path().join("again");
    src.fetch(find(&list, "big.csv"), &dest)
        .expect("fetch after error");
    assert!(fs::read(&dest).unwrap() == data);

    // A file that vanished is an error (not a panic, not an empty file).
    let gone = RemoteFile {
        name: "gone.csv".into(),
        size: 5,
        mtime: None,
    };
    let e = src
        .fetch(&gone, &out.path().join("gone"))
        .expect_err("fetching a missing file must fail");
    assert!(
        !matches!(e, SourceError::Auth(_) | SourceError::HostKey(_)),
        "{e:?}"
    );
}

/// Moving puts the file under the sub-folder, replaces a same-named file
/// there, and moving a file that is gone already is fine.
pub fn move_to(fx: &dyn Fixture) {
    let dir = fresh_inbox(fx, "move");
    put(fx, &dir, "a.csv", b"first");
    let mut src = fx.source("move");
    src.move_to("a.csv", "processed").expect("move");
    assert!(!dir.join("a.csv").exists(), "still in the inbox");
    assert_eq!(fs::read(dir.join("processed/a.csv")).unwrap(), b"first");

    // again: already moved
    src.move_to("a.csv", "processed")
        .expect("moving again is Ok");
    assert_eq!(fs::read(dir.join("processed/a.csv")).unwrap(), b"first");

    // a same-named file arrives again and replaces the processed one
    put(fx, &dir, "a.csv", b"second");
    src.move_to("a.csv", "processed").expect("move over");
    assert!(!dir.join("a.csv").exists());
    assert_eq!(fs::read(dir.join("processed/a.csv")).unwrap(), b"second");

    // nested folders are created
    put(fx, &dir, "b.csv", b"b");
    src.move_to("b.csv", "done/2026").expect("move nested");
    assert_eq!(fs::read(dir.join("done/2026/b.csv")).unwrap(), b"b");

    // the moved file no longer lists
    let list = src.list().expect("list");
    assert!(list.is_empty(), "{list:?}");
}

/// Removing is idempotent.
pub fn remove(fx: &dyn Fixture) {
    let dir = fresh_inbox(fx, "remove");
    put(fx, &dir, "a.csv", b"x");
    put(fx, &dir, "a.csv.done", b"");
    let mut src = fx.source("remove");
    src.remove("a.csv").expect("remove");
    assert!(!dir.join("a.csv").exists());
    assert!(dir.join("a.csv.done").exists(), "removed the wrong file");
    src.remove("a.csv").expect("removing again is Ok");
    src.remove("a.csv.done").expect("remove marker");
    assert!(!dir.join("a.csv.done").exists());
}

/// Upload lands under the folder (created if needed), replaces an older
/// copy, and leaves no temporary file behind.
pub fn upload(fx: &dyn Fixture) {
    let dir = fresh_inbox(fx, "upload");
    let mut src = fx.source("upload");
    let data = payload(5000, 3);
    src.upload("errors", "x.errors.csv", &data).expect("upload");
    assert!(fs::read(dir.join("errors/x.errors.csv")).unwrap() == data);
    src.upload("errors", "x.errors.csv", b"newer\n")
        .expect("upload over");
    assert_eq!(
        fs::read(dir.join("errors/x.errors.csv")).unwrap(),
        b"newer\n"
    );
    let left: Vec<String> = fs::read_dir(dir.join("errors"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, ["x.errors.csv"], "temporary files left behind");
    // the reports folder is not an inbox file
    let list = src.list().expect("list");
    assert!(list.is_empty(), "{list:?}");
}

/// `folder` tells a folder, a file in the way and nothing apart (nested
/// too), reads only, and `remove_in` takes an uploaded file away again.
pub fn folders(fx: &dyn Fixture) {
    use milebatch::source::Folder;
    let dir = fresh_inbox(fx, "folders");
    fs::create_dir_all(dir.join("processed/2026")).unwrap();
    chown(fx, &dir.join("processed"));
    chown(fx, &dir.join("processed/2026"));
    put(fx, &dir, "errors", b"a file where a folder should be");
    let mut src = fx.source("folders");
    assert_eq!(src.folder("processed").expect("folder"), Folder::Folder);
    assert_eq!(
        src.folder("processed/2026").expect("nested"),
        Folder::Folder
    );
    assert_eq!(src.folder("errors").expect("file"), Folder::NotAFolder);
    assert_eq!(src.folder("failed").expect("missing"), Folder::Missing);
    assert!(!dir.join("failed").exists(), "folder() created something");
    // the working folder is still the inbox afterwards
    put(fx, &dir, "a.csv", b"x");
    let names: Vec<String> = src
        .list()
        .expect("list")
        .into_iter()
        .map(|f| f.name)
        .collect();
    assert!(names.contains(&"a.csv".to_owned()), "{names:?}");

    src.upload("processed", ".probe", b"p").expect("upload");
    assert!(dir.join("processed/.probe").exists());
    src.remove_in("processed", ".probe").expect("remove_in");
    assert!(!dir.join("processed/.probe").exists(), "probe left");
    assert!(dir.join("errors").exists());
    let e = src.upload("errors", ".probe", b"p").unwrap_err();
    assert!(!e.retryable(), "a file in the way is not transient: {e:?}");
}

fn temp_db() -> (tempfile::TempDir, rusqlite::Connection) {
    let d = tempfile::tempdir().unwrap();
    let c = milebatch::db::open(&d.path().join("t.sqlite")).unwrap();
    (d, c)
}

fn candidate_names(fx: &dyn Fixture, inbox: &str, ready: Ready) -> Vec<String> {
    let (_d, conn) = temp_db();
    let mut src = fx.source(inbox);
    let stop = AtomicBool::new(false);
    // `stable:` here exercises the watch (list, wait, list again) that every
    // source must support: listing times are not trusted, as for FTP, whose
    // `LIST` times are minutes in the server's zone. Judging by mtime at
    // once is tested on local and SFTP in tests/pickup_outcomes.rs.
    let p = Pickup {
        ready,
        trust_mtime: false,
        ..pickup()
    };
    let mut v: Vec<String> = milebatch::pipeline::pickup::candidates(
        src.as_mut(),
        &p,
        &conn,
        "p",
        chrono::Utc::now(),
        &stop,
    )
    .expect("candidates")
    .ready
    .into_iter()
    .map(|f| f.name)
    .collect();
    v.sort();
    v
}

/// `ready = "done-file"`: only files whose `.done` marker is there.
pub fn ready_done_file(fx: &dyn Fixture) {
    let dir = fresh_inbox(fx, "ready-done");
    put(fx, &dir, "a.csv", b"1");
    put(fx, &dir, "b.csv", b"2");
    put(fx, &dir, "b.csv.done", b"");
    put(fx, &dir, "c.csv.done", b"");
    assert_eq!(
        candidate_names(fx, "ready-done", Ready::DoneFile),
        ["b.csv"]
    );
}

/// `ready = "stable:…"`: a file still growing between two listings waits.
pub fn ready_stable(fx: &dyn Fixture) {
    let dir = fresh_inbox(fx, "ready-stable");
    put(fx, &dir, "done.csv", b"complete");
    let growing = put(fx, &dir, "growing.csv", b"part");
    // It grows all through the watch, however long the login and the first
    // listing take (a TLS login on a loaded machine can take longer than
    // any fixed delay): every pair of listings sees two sizes.
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            use std::io::Write;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let mut f = fs::OpenOptions::new().append(true).open(&growing).unwrap();
                f.write_all(b" more bytes").unwrap();
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let got = candidate_names(
        fx,
        "ready-stable",
        Ready::Stable(Duration::from_millis(1500)),
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
    assert_eq!(got, ["done.csv"]);
    // Left alone, it becomes stable.
    let got = candidate_names(
        fx,
        "ready-stable",
        Ready::Stable(Duration::from_millis(300)),
    );
    assert_eq!(got, ["done.csv", "growing.csv"]);
}

/// After a commit: the report goes up to `errors/`, the file is deleted or
/// moved (refused ones to `failed/`), the done-file goes, the row is marked
/// tidied.
pub fn tidy(fx: &dyn Fixture) {
    use milebatch::pipeline::tidy::{tidy, TidyItem};
    let dir = fresh_inbox(fx, "tidy");
    let (d, conn) = temp_db();
    let report = d.path().join("x.errors.csv");
    fs::write(&report, b"bad,row,1,E003\r\n").unwrap();
    let mut src = fx.source("tidy");
    let cases = [
        ("x.csv", "credited", After::Delete, Some(&report)),
        ("y.csv", "credited", After::Move("processed".into()), None),
        ("z.csv", "refused", After::Delete, None),
    ];
    for (i, (name, outcome, after, rep)) in cases.iter().enumerate() {
        put(fx, &dir, name, b"data");
        put(fx, &dir, &format!("{name}.done"), b"");
        conn.execute(
            "INSERT INTO files(id, partner, name, size, sha256, outcome, started_at) VALUES (?1, 'p', ?2, 4, ?3, ?4, 'now')",
            rusqlite::params![i as i64 + 1, name, format!("h{i}"), outcome],
        )
        .unwrap();
        let item = TidyItem {
            file_id: i as i64 + 1,
            name: name.to_string(),
            outcome: outcome.to_string(),
            report_path: rep.map(|p| p.display().to_string()),
        };
        let p = Pickup {
            ready: Ready::DoneFile,
            after: after.clone(),
            ..pickup()
        };
        tidy(src.as_mut(), &p, &conn, &item).expect("tidy");
        assert!(!dir.join(name).exists(), "{name} left the inbox");
        assert!(
            !dir.join(format!("{name}.done")).exists(),
            "{name}.done removed"
        );
        let tidied: String = conn
            .query_row(
                "SELECT tidy FROM files WHERE id = ?1",
                [i as i64 + 1],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(tidied, "done");
    }
    assert_eq!(
        fs::read(dir.join("errors/x.errors.csv")).unwrap(),
        b"bad,row,1,E003\r\n"
    );
    assert!(dir.join("processed/y.csv").exists());
    assert!(
        dir.join("failed/z.csv").exists(),
        "a refused file goes to move_failed"
    );
    // Tidying again (a retried, interrupted tidy) is harmless.
    let item = TidyItem {
        file_id: 2,
        name: "y.csv".into(),
        outcome: "credited".into(),
        report_path: None,
    };
    tidy(src.as_mut(), &pickup(), &conn, &item).expect("tidy again");
    assert!(dir.join("processed/y.csv").exists());
}

/// Every case, for sources that can tidy.
pub fn run_all(fx: &dyn Fixture) {
    listing(fx);
    unsafe_names_are_skipped(fx);
    fetch(fx);
    move_to(fx);
    remove(fx);
    upload(fx);
    folders(fx);
    ready_done_file(fx);
    ready_stable(fx);
    tidy(fx);
}
