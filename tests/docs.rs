//! The guide under `docs/` (an mdBook) and the README, checked against the
//! code and the real binary: the book builds, every relative link and
//! `#anchor` resolves, every E/F code and every error message of the code
//! is documented, every `partners.toml` key has its row, and every shell
//! block is either run here (` ```sh `) or marked as not run
//! (` ```sh,norun `). The rules are written for people in
//! `docs/contributing.md`.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;

use pulldown_cmark::{CodeBlockKind, Event, Parser, Tag, TagEnd};

use common::workspace::BIN;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn docs() -> PathBuf {
    repo().join("docs")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The chapter files `docs/SUMMARY.md` links, in order (the book itself).
fn chapters() -> Vec<PathBuf> {
    let summary = read(&docs().join("SUMMARY.md"));
    let mut out = Vec::new();
    for ev in Parser::new(&summary) {
        if let Event::Start(Tag::Link { dest_url, .. }) = ev {
            out.push(docs().join(dest_url.as_ref()));
        }
    }
    assert!(!out.is_empty(), "SUMMARY.md links no chapter");
    out
}

/// mdBook's heading id: lower case, whitespace as `-`, anything but
/// letters, digits, `_` and `-` dropped (Unicode letters kept).
fn heading_id(text: &str) -> String {
    text.chars()
        .filter_map(|c| {
            if c.is_alphanumeric() || c == '_' || c == '-' {
                Some(c.to_lowercase().next().unwrap_or(c))
            } else if c.is_whitespace() {
                Some('-')
            } else {
                None
            }
        })
        .collect()
}

/// Every heading id of a Markdown text, with mdBook's `-1`, `-2` for
/// repeats.
fn anchors(text: &str) -> BTreeSet<String> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut out = BTreeSet::new();
    let mut current: Option<String> = None;
    for ev in Parser::new(text) {
        match ev {
            Event::Start(Tag::Heading { .. }) => current = Some(String::new()),
            Event::Text(t) | Event::Code(t) => {
                if let Some(h) = current.as_mut() {
                    h.push_str(&t);
                }
            }
            Event::End(TagEnd::Heading(_)) => {
                let id = heading_id(&current.take().unwrap_or_default());
                let n = seen.entry(id.clone()).or_insert(0);
                out.insert(if *n == 0 {
                    id.clone()
                } else {
                    format!("{id}-{n}")
                });
                *n += 1;
            }
            _ => {}
        }
    }
    out
}

/// Link and image targets of a Markdown text (never those in code).
fn links(text: &str) -> Vec<String> {
    Parser::new(text)
        .filter_map(|ev| match ev {
            Event::Start(Tag::Link { dest_url, .. })
            | Event::Start(Tag::Image { dest_url, .. }) => Some(dest_url.to_string()),
            _ => None,
        })
        .collect()
}

/// Broken relative links of `file`; `inside`: the folder targets must stay in.
fn broken_links(file: &Path, inside: &Path) -> Vec<String> {
    let text = read(file);
    let mut broken = Vec::new();
    for target in links(&text) {
        if target.contains("://") || target.starts_with("mailto:") {
            continue;
        }
        let (path, anchor) = match target.split_once('#') {
            Some((p, a)) => (p, Some(a)),
            None => (target.as_str(), None),
        };
        let dest = if path.is_empty() {
            file.to_path_buf()
        } else {
            file.parent().unwrap().join(path)
        };
        let Ok(dest) = dest.canonicalize() else {
            broken.push(format!("{}: {target}: no such file", file.display()));
            continue;
        };
        if !dest.starts_with(inside.canonicalize().unwrap()) {
            broken.push(format!(
                "{}: {target}: outside {} (name a repository file in code instead)",
                file.display(),
                inside.display()
            ));
            continue;
        }
        if let Some(anchor) = anchor {
            if dest.extension().is_some_and(|e| e == "md")
                && !anchors(&read(&dest)).contains(anchor)
            {
                broken.push(format!(
                    "{}: {target}: no heading with id #{anchor} in {}",
                    file.display(),
                    dest.display()
                ));
            }
        }
    }
    broken
}

#[test]
fn every_relative_link_and_anchor_resolves() {
    let mut broken = Vec::new();
    for chapter in chapters() {
        broken.extend(broken_links(&chapter, &docs()));
    }
    broken.extend(broken_links(&docs().join("SUMMARY.md"), &docs()));
    for top in ["README.md", "ARCHITECTURE.md"] {
        broken.extend(broken_links(&repo().join(top), repo()));
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn the_anchor_rule_is_mdbooks() {
    assert_eq!(
        heading_id("The web process: milebatch serve"),
        "the-web-process-milebatch-serve"
    );
    assert_eq!(
        heading_id("4. 結果のお知らせ：エラーファイルとサマリーファイル"),
        "4-結果のお知らせエラーファイルとサマリーファイル"
    );
    let ids = anchors("# A\n\n## A\n\n## `kind = \"sftp\"`\n");
    assert!(ids.contains("a") && ids.contains("a-1") && ids.contains("kind--sftp"));
}

/// mdBook, found on PATH or in cargo's bin folder (where
/// `.ci/install-deps.sh` installs it).
fn mdbook() -> PathBuf {
    let mut candidates = vec![PathBuf::from("mdbook")];
    if let Some(home) = std::env::var_os("CARGO_HOME") {
        candidates.push(PathBuf::from(home).join("bin/mdbook"));
    }
    if let Some(home) = std::env::var_os("HOME") {
        candidates.push(PathBuf::from(home).join(".cargo/bin/mdbook"));
    }
    for c in candidates {
        if Command::new(&c)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
        {
            return c;
        }
    }
    panic!(
        "mdbook is not installed, so the guide cannot be checked: run `bash .ci/install-deps.sh` \
         (it runs `cargo install mdbook --locked`)"
    );
}

#[test]
fn the_book_builds_without_a_warning() {
    let out_dir = tempfile::tempdir().unwrap();
    let out = Command::new(mdbook())
        .arg("build")
        .arg(docs())
        .arg("--dest-dir")
        .arg(out_dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "mdbook build docs failed:\n{stderr}");
    let complaints: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .collect();
    assert!(
        complaints.is_empty(),
        "mdbook build docs complained:\n{}",
        complaints.join("\n")
    );
    for chapter in chapters() {
        let html = out_dir
            .path()
            .join(chapter.file_name().unwrap())
            .with_extension("html");
        assert!(html.exists(), "{} was not rendered", html.display());
        // The link check's ids are the ones mdBook really gives headings.
        let rendered = read(&html);
        for id in anchors(&read(&chapter)) {
            assert!(
                rendered.contains(&format!("id=\"{id}\"")),
                "{}: mdBook gave no heading the id {id:?}: the link check's rule is out of date",
                html.display()
            );
        }
    }
}

#[test]
fn a_chapter_listed_without_its_file_fails_the_build() {
    let book = tempfile::tempdir().unwrap();
    for f in ["book.toml", "introduction.md"] {
        std::fs::copy(docs().join(f), book.path().join(f)).unwrap();
    }
    std::fs::write(
        book.path().join("SUMMARY.md"),
        "# Summary\n\n[Intro](introduction.md)\n\n- [Gone](gone.md)\n",
    )
    .unwrap();
    let out = Command::new(mdbook())
        .arg("build")
        .arg(book.path())
        .arg("--dest-dir")
        .arg(book.path().join("out"))
        .output()
        .unwrap();
    assert!(
        !out.status.success() && !book.path().join("gone.md").exists(),
        "create-missing must stay false: a missing chapter has to fail the build"
    );
}

/// The codes the code knows: `Code::E…` and `FileCode::F…` of the
/// pipeline's code table.
fn codes() -> BTreeSet<String> {
    let src = read(&repo().join("src/pipeline/validate.rs"));
    let mut out = BTreeSet::new();
    for (prefix, letter) in [("Code::", 'E'), ("FileCode::", 'F')] {
        for (i, _) in src.match_indices(prefix) {
            let code: String = src[i + prefix.len()..].chars().take(4).collect();
            if code.starts_with(letter) && code[1..].chars().all(|c| c.is_ascii_digit()) {
                out.insert(code);
            }
        }
    }
    assert!(out.iter().any(|c| c.starts_with('E')) && out.iter().any(|c| c.starts_with('F')));
    out
}

#[test]
fn every_code_has_its_entry_in_the_partner_and_operator_guides() {
    let mut missing = Vec::new();
    for guide in ["partner-guide-ja.md", "exchange-file.md"] {
        let text = read(&docs().join(guide));
        for code in codes() {
            if !text.lines().any(|l| l.starts_with(&format!("| {code} |"))) {
                missing.push(format!("{guide}: no `| {code} |` row"));
            }
        }
    }
    assert!(missing.is_empty(), "{}", missing.join("\n"));
}

/// The fixed text of every `#[error("…")]` of the code: its longest piece
/// between `{…}` placeholders, unescaped.
fn error_messages() -> Vec<(PathBuf, String)> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    let mut files = Vec::new();
    walk(&repo().join("src"), &mut files);
    let mut out = Vec::new();
    for file in files {
        let src = read(&file);
        for (i, _) in src.match_indices("#[error(") {
            let rest = src[i + 8..].trim_start();
            let Some(body) = rest.strip_prefix('"') else {
                continue; // transparent
            };
            let mut lit = String::new();
            let mut chars = body.chars();
            while let Some(c) = chars.next() {
                match c {
                    '"' => break,
                    '\\' => match chars.next() {
                        Some('\n') => {
                            // a line continuation: leading blanks go too
                            let rest: String = chars.clone().collect();
                            let skip = rest.len() - rest.trim_start().len();
                            for _ in 0..rest[..skip].chars().count() {
                                chars.next();
                            }
                        }
                        Some(c) => lit.push(c),
                        None => break,
                    },
                    c => lit.push(c),
                }
            }
            let mut pieces = Vec::new();
            let mut piece = String::new();
            let mut depth = 0;
            for c in lit.chars() {
                match c {
                    '{' => {
                        depth += 1;
                        pieces.push(std::mem::take(&mut piece));
                    }
                    '}' => depth -= 1,
                    c if depth == 0 => piece.push(c),
                    _ => {}
                }
            }
            pieces.push(piece);
            let best = pieces
                .iter()
                .map(|p| p.trim_matches(|c: char| c.is_whitespace() || ":;,".contains(c)))
                .max_by_key(|p| p.len())
                .unwrap_or_default()
                .to_string();
            if best.len() >= 10 {
                out.push((file.clone(), best));
            }
        }
    }
    assert!(out.len() > 10, "found only {} error messages", out.len());
    out
}

#[test]
fn every_error_message_of_the_code_is_in_troubleshooting() {
    let page = read(&docs().join("troubleshooting.md"));
    let missing: Vec<String> = error_messages()
        .into_iter()
        .filter(|(_, m)| !page.contains(m.as_str()))
        .map(|(f, m)| format!("{}: {m:?}", f.strip_prefix(repo()).unwrap().display()))
        .collect();
    assert!(
        missing.is_empty(),
        "messages not quoted in docs/troubleshooting.md:\n{}",
        missing.join("\n")
    );
}

/// Keys of a `struct NAME { … }` in `src`.
fn struct_fields(src: &str, name: &str) -> Vec<String> {
    let start = src
        .find(&format!("struct {name} {{"))
        .unwrap_or_else(|| panic!("no struct {name}"));
    let body = &src[start..];
    let body = &body[body.find('{').unwrap() + 1..body.find("\n}").unwrap()];
    body.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.starts_with("//"))
        .filter_map(|l| l.split_once(':').map(|(k, _)| k.trim().to_string()))
        .filter(|k| !k.is_empty() && k.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
        .collect()
}

#[test]
fn every_partners_toml_key_has_its_row() {
    let config = read(&repo().join("src/config.rs"));
    let mut keys = BTreeSet::new();
    for name in ["RawDaemon", "RawServer", "RawPartner", "RawApi"] {
        keys.extend(struct_fields(&config, name));
    }
    // Sub-tables, with a heading each rather than a row.
    keys.remove("source");
    keys.remove("api");
    // The keys each source kind takes (`SourceConfig::from_raw`'s lists).
    let source = read(&repo().join("src/source/config.rs"));
    let lists = &source[source.find("let allowed").expect("source key lists")..];
    let lists = &lists[..lists.find("other =>").unwrap()];
    for piece in lists.split('"').skip(1).step_by(2) {
        if piece.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
            keys.insert(piece.to_string());
        }
    }
    for kind in ["local", "sftp", "ftp", "ftps", "http", "https"] {
        keys.remove(kind);
    }
    let pages = read(&docs().join("configuration.md")) + &read(&docs().join("sources.md"));
    let first_cells: Vec<&str> = pages
        .lines()
        .filter_map(|l| l.strip_prefix("| "))
        .filter_map(|l| l.split(" | ").next())
        .collect();
    let missing: Vec<&String> = keys
        .iter()
        .filter(|k| {
            !first_cells
                .iter()
                .any(|cell| cell.contains(&format!("`{k}`")) || cell.contains(&format!("`{k} ")))
        })
        .collect();
    assert!(keys.len() > 30, "found only {} keys", keys.len());
    assert!(
        missing.is_empty(),
        "keys without a row in docs/configuration.md or docs/sources.md: {missing:?}"
    );
}

#[test]
fn every_notification_key_has_its_row() {
    let code = read(&repo().join("src/notify/config.rs"));
    let page = read(&docs().join("notifications.md"));
    let mut missing = Vec::new();
    for (name, heading) in [
        ("RawSmtp", "## `[daemon.smtp]`"),
        ("RawOpsNotify", "## `[daemon.notify]`"),
        ("RawPartnerNotify", "## `[partner.notify]`"),
    ] {
        let keys = struct_fields(&code, name);
        assert!(keys.len() >= 3, "{name}: found only {keys:?}");
        // The rows of that table's own section.
        let section = &page[page.find(heading).unwrap_or_else(|| panic!("no {heading}"))..];
        let section = &section[heading.len()..];
        let section = &section[..section.find("\n## ").unwrap_or(section.len())];
        for k in keys {
            if !section
                .lines()
                .any(|l| l.starts_with(&format!("| `{k}` |")))
            {
                missing.push(format!("{heading} {k}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "keys without a row in docs/notifications.md: {missing:?}"
    );
}

const SHELLS: [&str; 6] = ["sh", "bash", "shell", "console", "zsh", "shell-session"];

/// Every fenced block of a chapter: (info string, body).
fn code_blocks(text: &str) -> Vec<(Option<String>, String)> {
    let mut out = Vec::new();
    let mut current: Option<(Option<String>, String)> = None;
    for ev in Parser::new(text) {
        match ev {
            Event::Start(Tag::CodeBlock(kind)) => {
                let info = match kind {
                    CodeBlockKind::Fenced(info) if !info.trim().is_empty() => {
                        Some(info.trim().to_string())
                    }
                    _ => None,
                };
                current = Some((info, String::new()));
            }
            Event::Text(t) => {
                if let Some((_, body)) = current.as_mut() {
                    body.push_str(&t);
                }
            }
            Event::End(TagEnd::CodeBlock) => out.extend(current.take()),
            _ => {}
        }
    }
    out
}

/// What is wrong with a block's marking, if anything.
fn marking_problem(info: Option<&str>, body: &str) -> Option<String> {
    let Some(info) = info else {
        return Some(
            "a code block without a language: mark it `sh`, `sh,norun`, `text`, `toml`, …".into(),
        );
    };
    let lang = info.split([',', ' ']).next().unwrap_or_default();
    if SHELLS.contains(&lang) && info != "sh" && info != "sh,norun" {
        return Some(format!(
            "```{info}: a shell block is ```sh (run by tests/docs.rs) or ```sh,norun"
        ));
    }
    if lang == "text"
        && body
            .lines()
            .any(|l| l.starts_with("$ ") || l.starts_with("# milebatch "))
    {
        return Some("a shell session in a ```text block: use ```sh or ```sh,norun".into());
    }
    None
}

#[test]
fn the_marking_rule_catches_unmarked_shell() {
    assert!(marking_problem(Some("sh"), "milebatch check").is_none());
    assert!(marking_problem(Some("sh,norun"), "systemctl restart x").is_none());
    assert!(marking_problem(Some("toml"), "a = 1").is_none());
    assert!(marking_problem(Some("bash"), "ls").is_some());
    assert!(marking_problem(Some("console"), "$ ls").is_some());
    assert!(marking_problem(Some("sh,ignore"), "ls").is_some());
    assert!(marking_problem(None, "milebatch once").is_some());
    assert!(marking_problem(Some("text"), "$ milebatch once").is_some());
}

/// A fresh copy of the example installation (the README's first command):
/// `partners.toml` and `fixtures/`.
fn demo_workspace() -> tempfile::TempDir {
    fn copy(from: &Path, to: &Path) {
        if from.is_dir() {
            std::fs::create_dir_all(to).unwrap();
            for e in std::fs::read_dir(from).unwrap() {
                let e = e.unwrap();
                copy(&e.path(), &to.join(e.file_name()));
            }
        } else {
            std::fs::copy(from, to).unwrap();
        }
    }
    let dir = tempfile::tempdir().unwrap();
    copy(
        &repo().join("partners.toml"),
        &dir.path().join("partners.toml"),
    );
    copy(&repo().join("fixtures"), &dir.path().join("fixtures"));
    dir
}

#[test]
fn every_shell_block_is_run_or_marked_norun_and_the_run_ones_pass() {
    let bin_dir = Path::new(BIN).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut problems = Vec::new();
    let mut ran = 0;
    for chapter in chapters() {
        let name = chapter.file_name().unwrap().to_string_lossy().to_string();
        let blocks = code_blocks(&read(&chapter));
        let mut workspace: Option<tempfile::TempDir> = None;
        for (info, body) in &blocks {
            if let Some(p) = marking_problem(info.as_deref(), body) {
                problems.push(format!("{name}: {p}:\n{body}"));
                continue;
            }
            if info.as_deref() != Some("sh") {
                continue;
            }
            let ws = workspace.get_or_insert_with(demo_workspace);
            let out = Command::new("bash")
                .args(["-euo", "pipefail", "-c", body.as_str()])
                .current_dir(ws.path())
                .env("PATH", &path)
                .env_remove("MILEBATCH_CONFIG")
                .env_remove("RUST_LOG")
                .output()
                .unwrap();
            ran += 1;
            if !out.status.success() {
                problems.push(format!(
                    "{name}: this ```sh block exited {}:\n{body}\nstdout:\n{}\nstderr:\n{}",
                    out.status,
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
    assert!(ran > 0, "no ```sh block was run: the runner is not working");
}
