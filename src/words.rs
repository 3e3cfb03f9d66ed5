//! What people read on the site and in the files they open in Excel: numbers with 桁区切り and the Japanese
//! words for the stored English values (channels, outcomes, member states,
//! audit actions), and the row and file codes in plain words (the site's
//! upload result and the notification mails share them). Registered as
//! template filters (`n`, `channel`, `outcome`, `member_status`, `action`).
//!
//! What must stay true: only the screen (and mail) uses these; CSV and JSON
//! keep plain digits and the stored values. An unknown value is shown as it
//! is stored (never hidden), so a new value is visible before it is
//! translated.

use crate::pipeline::validate::{Code, FileCode};

/// `1234567` → `1,234,567` (and `-1234` → `-1,234`).
pub fn digits(n: i64) -> String {
    let plain = n.unsigned_abs().to_string();
    let mut out = String::with_capacity(plain.len() + plain.len() / 3 + 1);
    if n < 0 {
        out.push('-');
    }
    for (i, c) in plain.chars().enumerate() {
        if i > 0 && (plain.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The channel a credit came by.
pub fn channel(v: &str) -> String {
    match v {
        "upload" => "アップロード",
        "pull" => "取得",
        "api" => "API",
        _ => return v.to_owned(),
    }
    .to_owned()
}

/// A file's or a run's outcome.
pub fn outcome(v: &str) -> String {
    match v {
        "credited" => "積算済み",
        "ok" => "成功",
        "skipped" => "スキップ（休業日など）",
        "tidy-failed" => "後片付けに失敗",
        "refused" => "拒否",
        "duplicate" => "重複のため拒否",
        "dry-run" => "検証のみ",
        "reversed" => "取り消し済み",
        "failed" => "失敗",
        "running" => "実行中",
        "missed" => "未着",
        "no-file" => "ファイルなし",
        _ => return v.to_owned(),
    }
    .to_owned()
}

/// A member's state.
pub fn member_status(v: &str) -> String {
    match v {
        "active" => "有効",
        "suspended" => "停止中",
        "withdrawn" => "退会済み",
        _ => return v.to_owned(),
    }
    .to_owned()
}

/// The audit log's actions (`audit::Entry::action`), in the order the
/// audit page's filter offers them.
pub const ACTIONS: [(&str, &str); 16] = [
    ("login", "ログイン"),
    ("login-failed", "ログイン失敗"),
    ("upload", "アップロード"),
    ("download", "エラーファイルのダウンロード"),
    ("history-export", "履歴のエクスポート"),
    ("statement-download", "月次明細のダウンロード"),
    ("api-key-create", "API キーの作成"),
    ("api-key-revoke", "API キーの失効"),
    ("run-now", "今すぐ実行"),
    ("reverse", "取り消し"),
    ("retry", "再積算"),
    ("member-lookup", "会員検索"),
    ("member-verify", "会員確認（API）"),
    ("user-add", "ユーザー追加"),
    ("user-disable", "ユーザー無効化"),
    ("user-passwd", "パスワード再発行"),
];

/// An audit action in words (`user-enable` too, added with the command).
pub fn action(v: &str) -> String {
    if v == "user-enable" {
        return "ユーザー有効化".to_owned();
    }
    ACTIONS
        .iter()
        .find(|(k, _)| *k == v)
        .map_or_else(|| v.to_owned(), |(_, w)| (*w).to_owned())
}

/// Add the filters to the site's template environment.
pub fn register(e: &mut minijinja::Environment<'static>) {
    e.add_filter("n", |v: minijinja::Value| -> String {
        match i64::try_from(v.clone()) {
            Ok(n) => digits(n),
            // Not a number ("—", none): as it is.
            Err(_) if v.is_none() || v.is_undefined() => String::new(),
            Err(_) => v.to_string(),
        }
    });
    e.add_filter("channel", |v: String| channel(&v));
    e.add_filter("outcome", |v: String| outcome(&v));
    e.add_filter("member_status", |v: String| member_status(&v));
    e.add_filter("action", |v: String| action(&v));
}

/// A refusal in plain words, for the partner.
pub fn file_code_text(code: FileCode) -> &'static str {
    match code {
        FileCode::F001 => "同じ内容のファイルがすでに積算されています（ファイル名が違っても、取得・アップロードのどちらでも同じです）。同じ交換を二重に積算しないため、このファイルは処理していません。",
        FileCode::F002 => "CSV として読み取れません（64 KiB を超える行、または閉じられていない引用符があります）。",
        FileCode::F003 => "データ行がありません（空のファイル、またはヘッダー行だけのファイルです）。",
        FileCode::F004 => "エラーになった行の割合が上限を超えています。エラーファイルで各行の理由を確認し、直してからもう一度アップロードしてください。",
        FileCode::F005 => "積算すると会員の残高が上限を超えます。",
        FileCode::F006 => "以前に積算したファイルの再送と思われます（多くの行がすでに積算済みです）。新しい交換だけのファイルにしてください。",
        FileCode::F007 => "1 行目はヘッダー行のはずですが、データ行になっています（その行を失わないよう、ファイル全体を処理していません）。",
        FileCode::F008 => "暗号化ファイルを復号できません（当社の公開鍵で暗号化されていない、ファイルが途中で壊れている・改変されている）、または署名がない・署名を検証できません。正しい鍵で暗号化・署名して、もう一度送ってください。",
    }
}

/// A row error code in plain words.
pub fn code_text(code: Code) -> &'static str {
    match code {
        Code::E001 => "列の数が 3 ではありません",
        Code::E002 => "会員が空です",
        Code::E003 => "会員が見つかりません（会員IDまたは登録メールアドレス）",
        Code::E004 => "会員が有効ではありません（停止中または退会済み）",
        Code::E005 => "指定キーが空、または 64 文字を超えています",
        Code::E006 => "マイルが正の整数ではありません",
        Code::E007 => "マイルが 1 行あたりの上限を超えています",
        Code::E008 => "同じ行がこのファイルの前の行にあります",
        Code::E009 => "文字コードが正しくないか、制御文字（タブ・改行など）が含まれています",
        Code::E010 => "指定キーはすでに積算されています",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digits_group_by_three() {
        assert_eq!(digits(0), "0");
        assert_eq!(digits(999), "999");
        assert_eq!(digits(1000), "1,000");
        assert_eq!(digits(50_020_175), "50,020,175");
        assert_eq!(digits(200_000), "200,000");
        assert_eq!(digits(-1234), "-1,234");
        assert_eq!(digits(i64::MIN), "-9,223,372,036,854,775,808");
    }

    #[test]
    fn stored_values_read_in_japanese_and_unknown_ones_stay() {
        assert_eq!(channel("upload"), "アップロード");
        assert_eq!(outcome("refused"), "拒否");
        assert_eq!(member_status("suspended"), "停止中");
        assert_eq!(action("member-lookup"), "会員検索");
        assert_eq!(action("something-new"), "something-new");
    }

    #[test]
    fn the_n_filter_formats_numbers_only() {
        let mut e = minijinja::Environment::new();
        register(&mut e);
        let out = e
            .render_str(
                "{{ a|n }} {{ b|n }} {{ c|n }}",
                minijinja::context! { a => 1234567, b => "—", c => () },
            )
            .unwrap();
        assert_eq!(out, "1,234,567 — ");
    }
}
