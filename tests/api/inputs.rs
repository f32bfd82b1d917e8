//! Bad input, generated (proptest): every parser and every form, API path and body
//! gets odd Unicode, control characters, huge and malformed values. Each answer is
//! a 4xx with a message (never a 5xx), and the database is unchanged. The number
//! of cases tried is printed.

use data_export::{
    orgs::{OrgSlug, modules::Module},
    routes::*,
    settings::{self, schedule},
};
use proptest::{
    prelude::*,
    strategy::{Strategy, ValueTree},
    test_runner::{Config, TestRunner},
};

use crate::helpers::{Options, PASSWORD, TestApp};

/// Cases per property.
const CASES: u32 = 256;

/// Text as a hostile client sends it: any Unicode (NUL, controls, RTL marks,
/// combining marks, emoji), plus near-misses of valid values.
fn text() -> BoxedStrategy<String> {
    prop_oneof![
        any::<String>(),
        "\\PC{0,24}",
        "[0-9 +-]{0,6}",
        "[a-z_/]{0,20}",
        Just("\u{0}".to_string()),
        Just("7\u{0}".to_string()),
        Just("\u{202e}7".to_string()),
        Just("e\u{301}".to_string()),
        Just("🦀".repeat(40)),
        Just("9".repeat(400)),
        Just("-1".to_string()),
        Just("367".to_string()),
        Just("1e3".to_string()),
        Just("Europe/Berlin\u{0}".to_string()),
        Just("../../etc/passwd".to_string()),
        Just("' or 1=1 --".to_string()),
        Just("<script>alert(1)</script>".to_string()),
    ]
    .boxed()
}

/// Draws `n` values (deterministically, so a failure reproduces).
fn draw<T: std::fmt::Debug>(strategy: impl Strategy<Value = T>, n: u32) -> Vec<T> {
    let mut runner = TestRunner::new_with_rng(
        Config::default(),
        proptest::test_runner::TestRng::deterministic_rng(proptest::test_runner::RngAlgorithm::ChaCha),
    );
    (0..n).map(|_| strategy.new_tree(&mut runner).unwrap().current()).collect()
}

proptest! {
    #![proptest_config(Config { cases: CASES, ..Config::default() })]

    #[test]
    fn slugs_are_accepted_exactly_when_well_formed(s in prop_oneof![text(), "[a-z0-9-]{0,45}".boxed()]) {
        let well_formed = (3..=40).contains(&s.len())
            && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !s.starts_with('-')
            && !s.ends_with('-');
        prop_assert_eq!(OrgSlug::parse(&s).map(|o| o.as_str().to_string()), well_formed.then(|| s.clone()));
    }

    #[test]
    fn retention_counts_are_whole_numbers_up_to_366(s in text()) {
        match settings::parse_count("Daily", &s) {
            Ok(n) => {
                prop_assert!(n <= 366);
                prop_assert_eq!(s.trim().parse::<u32>().ok(), Some(n));
            }
            Err(e) => prop_assert!(e.contains("Daily"), "the message names the field: {e}"),
        }
    }

    #[test]
    fn presets_modules_and_timezones_are_from_their_lists(s in text()) {
        if let Some(p) = schedule::Preset::parse(&s) {
            prop_assert_eq!(p.key(), s.as_str());
        }
        if let Some(m) = Module::parse(&s) {
            prop_assert_eq!(m.key(), s.as_str());
        }
        if let Some(tz) = schedule::parse_timezone(&s) {
            prop_assert_eq!(tz.name(), s.trim());
        }
    }

    #[test]
    fn the_environment_is_parsed_or_refused_never_panicking(
        key in prop::sample::select(vec![
            "DATABASE_URL", "S3_ENDPOINT", "S3_REGION", "S3_FORCE_PATH_STYLE", "S3_PUBLIC_ENDPOINT", "BIND",
            "BOARD_BIND", "PUBLIC_URL", "BOARD_PUBLIC_URL", "HEARTBEAT_SECS", "MISSED_HEARTBEATS",
            "EXPORT_MAX_ATTEMPTS", "PRIVACY_BUCKET", "DATA_DIR", "IMPORT_MAX_BYTES", "SMTP_URL", "SMTP_CA_FILE",
            "MAIL_FROM", "MAIL_RETRY_SCHEDULE_SECS",
        ]),
        value in text(),
    ) {
        let result = data_export::config::Config::from_lookup(|k| (k == key).then(|| value.clone()));
        if let Err(e) = result {
            let msg = format!("{e:#}");
            prop_assert!(!msg.is_empty() && msg.len() < 2000);
        }
    }
}

/// What a refused request must leave alone: every table but sessions and the
/// sign-in failure counter (which count attempts by design).
async fn fingerprint(app: &TestApp) -> String {
    let tables: Vec<(String,)> = sqlx::query_as(
        "select table_name::text from information_schema.tables
         where table_schema = 'public' and table_type = 'BASE TABLE'
           and table_name not in ('sessions', 'login_failures', '_sqlx_migrations')
         order by 1",
    )
    .fetch_all(app.pool())
    .await
    .unwrap();
    let mut out = String::new();
    for (t,) in tables {
        let (h,): (Option<String>,) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            // A token's last use is bookkeeping, not a change the request made.
            "select md5(string_agg((to_jsonb(x) - 'last_used_at')::text, ',' order by (to_jsonb(x) - 'last_used_at')::text)) from {t} x"
        )))
        .fetch_one(app.pool())
        .await
        .unwrap();
        out.push_str(&format!("{t}:{}\n", h.unwrap_or_default()));
    }
    let (jobs,): (i64,) = sqlx::query_as("select count(*) from apalis.jobs").fetch_one(app.pool()).await.unwrap();
    out.push_str(&format!("apalis.jobs:{jobs}"));
    out
}

/// A form: its path, who may post it, and the fields it knows.
struct Form {
    path: &'static str,
    as_email: &'static str,
    fields: &'static [&'static str],
    /// Whether the product would accept these pairs (so the case is skipped: it is
    /// not bad input).
    valid: fn(&[(String, String)]) -> bool,
}

/// The value of `k` when every field is known and none repeats.
fn single<'a>(pairs: &'a [(String, String)], known: &[&str], k: &str) -> Option<Option<&'a str>> {
    let mut seen = Vec::new();
    for (key, _) in pairs {
        if !known.contains(&key.as_str()) || seen.contains(key) {
            return None;
        }
        seen.push(key.clone());
    }
    Some(pairs.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str()))
}

const FORMS: &[Form] = &[
    Form {
        path: PLATFORM_RETENTION,
        as_email: "platform@example.test",
        fields: &["daily", "weekly", "monthly"],
        valid: |p| {
            ["daily", "weekly", "monthly"].iter().all(|k| {
                single(p, &["daily", "weekly", "monthly"], k)
                    .is_some_and(|v| settings::parse_count(k, v.unwrap_or("")).is_ok())
            })
        },
    },
    Form {
        path: PLATFORM_SCHEDULE,
        as_email: "platform@example.test",
        fields: &["preset", "timezone"],
        valid: |p| {
            let known = ["preset", "timezone"];
            single(p, &known, "preset").is_some_and(|v| schedule::Preset::parse(v.unwrap_or("")).is_some())
                && single(p, &known, "timezone").is_some_and(|v| schedule::parse_timezone(v.unwrap_or("")).is_some())
        },
    },
    Form {
        path: PLATFORM_BACKUP,
        as_email: "platform@example.test",
        fields: &["active"],
        valid: |p| single(p, &["active"], "active").is_some_and(|v| matches!(v, None | Some("on" | "true" | "1"))),
    },
    Form {
        path: PLATFORM_PRIVACY,
        as_email: "platform@example.test",
        fields: &["email", "reason"],
        valid: |p| {
            single(p, &["email", "reason"], "email")
                .is_some_and(|v| v.unwrap_or("").trim().to_lowercase().ends_with(".test"))
        },
    },
    Form {
        path: PLATFORM_PRIVACY_RETENTION,
        as_email: "platform@example.test",
        fields: &["days"],
        valid: |p| {
            single(p, &["days"], "days")
                .is_some_and(|v| v.unwrap_or("").trim().parse::<i32>().is_ok_and(|d| (1..=90).contains(&d)))
        },
    },
    Form {
        path: PLATFORM_IMPORTS,
        as_email: "platform@example.test",
        fields: &["source_export_id", "slug", "name"],
        // No generated text is the id of a completed export: every case is refused.
        valid: |_| false,
    },
    Form {
        path: "/orgs/acme/settings/modules",
        as_email: "admin@acme.test",
        fields: &["module"],
        // Checkboxes: any number of known modules (none at all turns every optional one off).
        valid: |p| p.iter().all(|(k, v)| k == "module" && Module::parse(v).is_some()),
    },
    Form {
        path: ME_NOTIFICATIONS,
        as_email: "member@acme.test",
        fields: &[
            "export_failed",
            "export_completed_mine",
            "export_completed_scheduled",
            "webhook",
            "schedule",
            "privacy",
        ],
        // Checkboxes: each kind that can be switched off, once, as "on" (none at all
        // switches every one off).
        valid: |p| {
            let known = ["export_failed", "export_completed_mine", "export_completed_scheduled", "webhook", "schedule"];
            known.iter().all(|k| single(p, &known, k).is_some_and(|v| matches!(v, None | Some("on"))))
        },
    },
    Form {
        path: LOGIN,
        as_email: "member@acme.test",
        fields: &["email", "password"],
        valid: |p| p.iter().any(|(k, v)| k == "password" && v == PASSWORD),
    },
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_forms_paths_and_bodies_get_a_4xx_and_change_nothing() {
    let app = TestApp::spawn_with(Options { workers: false, ..Default::default() }).await;
    let mut tried = 0u32;
    let mut skipped = 0u32;
    let mut failures = Vec::new();
    let mut check = |what: String, status: u16, body: &str| {
        tried += 1;
        if !(400..500).contains(&status) {
            failures.push(format!("{what}: {status}"));
        } else if body.trim().is_empty() {
            failures.push(format!("{what}: {status} with no message"));
        }
    };

    // Sign in first: the sign-in form's cases use up the address's failure budget.
    let admin = app.login("admin@acme.test").await;
    let mut sessions = std::collections::HashMap::new();
    for form in FORMS {
        if !sessions.contains_key(form.as_email) {
            sessions.insert(form.as_email, app.login(form.as_email).await);
        }
    }
    let token = app.token("admin@acme.test").await;
    // Everything from here on is refused, and must leave the database as it is now.
    let before = fingerprint(&app).await;
    // Forms: each field any text (or absent), plus unknown and repeated fields.
    for form in FORMS {
        let s = &sessions[form.as_email];
        let fields = prop::collection::vec(
            (
                prop::sample::select(
                    form.fields.iter().map(|f| f.to_string()).chain(["x".to_string()]).collect::<Vec<_>>(),
                ),
                text(),
            ),
            0..4,
        );
        for pairs in draw(fields, CASES) {
            if (form.valid)(&pairs) {
                skipped += 1;
                continue;
            }
            let mut body: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            body.push(("csrf_token", &s.csrf));
            let r = s.client.post(format!("{}{}", s.base, form.path)).form(&body).send().await.unwrap();
            let status = r.status().as_u16();
            check(format!("POST {} {pairs:?}", form.path), status, &r.text().await.unwrap_or_default());
        }
        // Malformed, oversized and mistyped bodies.
        for (ct, raw) in [
            ("application/x-www-form-urlencoded", b"daily=%zz&csrf_token=".to_vec()),
            (
                "application/x-www-form-urlencoded",
                [b"csrf_token=".as_slice(), s.csrf.as_bytes(), b"&daily=%FF%FE"].concat(),
            ),
            ("application/x-www-form-urlencoded", vec![b'a'; 300 * 1024]),
            ("application/json", br#"{"daily": 1}"#.to_vec()),
            ("text/plain", b"\x00\x01\x02".to_vec()),
        ] {
            let r = s
                .client
                .post(format!("{}{}", s.base, form.path))
                .header("content-type", ct)
                .header("x-csrf-token", &s.csrf)
                .body(raw)
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            check(format!("POST {} as {ct}", form.path), status, &r.text().await.unwrap_or_default());
        }
    }

    // Paths: odd ids and slugs in every route that takes them, in the UI and the API.
    let segment = text().prop_map(|t| url::form_urlencoded::byte_serialize(t.as_bytes()).collect::<String>());
    let routes: Vec<(&str, String)> = data_export::router::HTML_ROUTES
        .iter()
        .map(|(m, p)| (*m, p.to_string()))
        .chain(data_export::router::API_ROUTES.iter().map(|(m, p)| (*m, format!("{API_PREFIX}{p}"))))
        .filter(|(_, p)| p.contains("{id}") || p.contains("{org}"))
        .collect();
    for (i, raw) in draw(segment, CASES * 2).into_iter().enumerate() {
        let (method, pattern) = &routes[i % routes.len()];
        // Either the id or the slug is the odd one; the other is real.
        let path = if i % 3 == 0 || !pattern.contains("{id}") {
            path(pattern, &raw, Some("01JAAAAAAAAAAAAAAAAAAAAAAA"))
        } else {
            path(pattern, "acme", Some(&raw))
        };
        let mut req = admin.client.request(method.parse().unwrap(), format!("{}{path}", admin.base));
        if pattern.starts_with(API_PREFIX) {
            req = req.bearer_auth(&token);
        } else if *method == "POST" {
            req = req.header("x-csrf-token", &admin.csrf);
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        check(format!("{method} {path}"), status, &r.text().await.unwrap_or_default());
    }

    // API bodies and headers: the API takes no body; garbage, huge or mistyped ones,
    // and malformed tokens, are refused.
    let api_cases: Vec<(&str, String, Vec<u8>)> = vec![
        ("POST", format!("{API_PREFIX}/orgs/acme/exports"), vec![b'{'; 300 * 1024]),
        ("DELETE", format!("{API_PREFIX}/orgs/acme/exports/not-a-ulid"), b"[1,2".to_vec()),
        ("GET", format!("{API_PREFIX}/orgs/acme/exports/%00"), vec![]),
        ("PUT", format!("{API_PREFIX}/orgs/acme/exports"), vec![]),
        ("PATCH", format!("{API_PREFIX}/orgs/acme/exports/x"), vec![]),
    ];
    for (method, path, body) in api_cases {
        let r = admin
            .client
            .request(method.parse().unwrap(), format!("{}{path}", admin.base))
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        check(format!("{method} {path}"), status, &r.text().await.unwrap_or_default());
    }
    for bad_token in draw(text(), CASES / 4) {
        let header = format!("Bearer {bad_token}");
        let Ok(value) = reqwest::header::HeaderValue::from_str(&header) else { continue };
        let r = app
            .client()
            .get(app.url(&format!("{API_PREFIX}/orgs/acme/exports")))
            .header("authorization", value)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        check(format!("token {bad_token:?}"), status, &r.text().await.unwrap_or_default());
    }

    let after = fingerprint(&app).await;
    assert!(failures.is_empty(), "{} of {tried} answered badly:\n{}", failures.len(), failures.join("\n"));
    assert_eq!(before, after, "refused requests changed the database");
    println!(
        "bad input: {tried} requests tried ({skipped} generated cases were valid input and skipped), all 4xx, database unchanged"
    );
}
