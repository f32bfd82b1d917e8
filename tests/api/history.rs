//! The Export History pages back in time (keyset paging on `(created_at, id)`):
//! every run of any age is reached exactly once, newest first, in the UI and in the
//! API, while new runs arrive; and a page's actions answer with the same page.

use serde_json::Value;

use crate::helpers::*;

/// The run ids of a page of HTML, in order.
fn ids_in(html: &str) -> Vec<String> {
    html.split("data-export-id=\"").skip(1).map(|rest| rest[..26].to_string()).collect()
}

/// The `href` of the "Older" link, if the page has one.
fn older_link(html: &str) -> Option<String> {
    let at = html.find("id=\"history-older\"")?;
    let tag_start = html[..at].rfind('<')?;
    let tag = &html[tag_start..tag_start + html[tag_start..].find('>')?];
    let href = tag.split(" href=\"").nth(1)?;
    Some(href[..href.find('"')?].replace("&amp;", "&"))
}

async fn insert_runs(app: &TestApp, org: &str, n: usize) {
    // Ids in random order against time, and every three runs share one instant, so
    // only (created_at, id) orders them.
    let ids: Vec<String> = (0..n).map(|_| ulid::Ulid::generate().to_string()).collect();
    let ages: Vec<i32> = (0..n as i32).map(|i| i / 3).collect();
    sqlx::query(
        "insert into export_runs (id, org_id, status, trigger, created_at, started_at, finished_at,
                                  object_key, sha256, size_bytes, error)
         select t.id, o.id,
                case when t.n % 7 = 0 then 'failed' when t.n % 11 = 0 then 'deleted' else 'completed' end,
                'manual', now() - make_interval(mins => t.age + 10), now() - make_interval(mins => t.age + 10),
                now() - make_interval(mins => t.age + 9),
                case when t.n % 7 = 0 then null else 'exports/old/' || t.id || '.json.gz' end,
                case when t.n % 7 = 0 then null else repeat('0', 64) end,
                case when t.n % 7 = 0 then null else 1000 end,
                case when t.n % 7 = 0 then 'The export failed.' end
         from unnest($2::text[], $3::int[]) with ordinality as t(id, age, n), organizations o where o.slug = $1",
    )
    .bind(org)
    .bind(&ids)
    .bind(&ages)
    .execute(app.pool())
    .await
    .unwrap();
}

async fn expected(app: &TestApp, org: &str) -> Vec<String> {
    sqlx::query_scalar(
        "select r.id from export_runs r join organizations o on o.id = r.org_id where o.slug = $1
         order by r.created_at desc, r.id desc",
    )
    .bind(org)
    .fetch_all(app.pool())
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_one_of_1200_runs_is_reached_once_paging_the_ui_and_the_api() {
    let app = TestApp::spawn_with(Options { members: 100, workers: false, ..Default::default() }).await;
    insert_runs(&app, "acme", 1_200).await;
    insert_runs(&app, "globex", 30).await;
    let want = expected(&app, "acme").await;
    assert_eq!(want.len(), 1_200);

    // The UI: the page, then each "Older" link, as a person clicks through.
    let s = app.login("admin@acme.test").await;
    let mut seen = Vec::new();
    let mut next = Some("/orgs/acme/settings/backups".to_string());
    let mut pages = 0;
    while let Some(path) = next.take() {
        let r = s.get(&path).await;
        assert_eq!(r.status(), 200, "{path}");
        let html = r.text().await.unwrap();
        let ids = ids_in(&html);
        assert!(ids.len() <= 50, "a page holds at most 50 runs");
        if pages > 0 {
            assert!(html.contains("id=\"history-newest\""), "an older page links back to the newest");
        }
        seen.extend(ids);
        next = older_link(&html);
        pages += 1;
        if pages == 2 {
            // A run created while someone pages back shifts nothing that follows.
            insert_runs(&app, "acme", 1).await;
        }
    }
    assert_eq!(seen, want, "the UI reaches every run exactly once, newest first");
    assert_eq!(pages, 24);

    // The fragment htmx swaps in pages the same way.
    let want = expected(&app, "acme").await;
    let mut seen = Vec::new();
    let mut next = Some("/orgs/acme/exports/history".to_string());
    while let Some(path) = next.take() {
        let html = s.htmx_get(&path).await.text().await.unwrap();
        seen.extend(ids_in(&html));
        next = older_link(&html).map(|older| older.replace("/settings/backups", "/exports/history"));
    }
    assert_eq!(seen, want, "the fragment reaches every run exactly once");

    // The API: `limit` and the `Link: <..>; rel="next"` header.
    let api = api(&app, &app.token("admin@acme.test").await);
    let mut seen = Vec::new();
    let mut next = Some("/orgs/acme/exports?limit=97".to_string());
    let mut calls = 0;
    while let Some(path) = next.take() {
        let r = api.get(&path).await;
        assert_eq!(r.status(), 200, "{path}");
        let link = r.headers().get("link").map(|v| v.to_str().unwrap().to_string());
        let page: Vec<Value> = r.json().await.unwrap();
        assert!(page.len() <= 97);
        seen.extend(page.iter().map(|run| run["id"].as_str().unwrap().to_string()));
        next = link.map(|l| {
            assert!(
                l.starts_with(&format!("<{}/api/v1/orgs/acme/exports?limit=97&before=", app.state.config.public_url)),
                "{l}"
            );
            assert!(l.ends_with(">; rel=\"next\""), "{l}");
            let url = &l[1..l.find('>').unwrap()];
            url[url.find("/orgs/").unwrap()..].to_string()
        });
        calls += 1;
    }
    assert_eq!(seen, want, "the API reaches every run exactly once, newest first");
    assert_eq!(calls, 13, "1,201 runs in pages of 97");
    // The default page is 100, and the last page has no Link.
    let r = api.get("/orgs/acme/exports").await;
    assert!(r.headers().get("link").is_some());
    assert_eq!(r.json::<Vec<Value>>().await.unwrap().len(), 100);
    println!("history paging: 1,201 runs walked once each: UI in 24 pages of 50, the API in {calls} pages of 97");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_page_is_refused_and_a_pages_actions_answer_with_that_page() {
    let app = TestApp::spawn_with(Options { members: 100, workers: false, ..Default::default() }).await;
    insert_runs(&app, "acme", 120).await;
    insert_runs(&app, "globex", 3).await;
    let globex_run = expected(&app, "globex").await.remove(0);
    let acme = expected(&app, "acme").await;
    let api = api(&app, &app.token("admin@acme.test").await);
    for bad in ["limit=0", "limit=501", "limit=ten", "before=nope", "before=../../x", &format!("before={globex_run}")] {
        let r = api.get(&format!("/orgs/acme/exports?{bad}")).await;
        assert_eq!(r.status(), 400, "{bad}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"], "bad_request", "{bad}");
        assert!(!body["message"].as_str().unwrap().is_empty());
    }
    let s = app.login("admin@acme.test").await;
    for bad in ["before=nope", &format!("before={globex_run}")] {
        assert_eq!(s.get(&format!("/orgs/acme/settings/backups?{bad}")).await.status(), 400, "{bad}");
        assert_eq!(s.htmx_get(&format!("/orgs/acme/exports/history?{bad}")).await.status(), 400, "{bad}");
    }

    // Delete a completed run on the second page: the answer is the second page again.
    let before = acme[49].clone();
    let page2: Vec<String> = acme[50..100].to_vec();
    let completed: Vec<String> =
        sqlx::query_scalar("select id from export_runs where id = any($1) and status = 'completed'")
            .bind(&page2)
            .fetch_all(app.pool())
            .await
            .unwrap();
    let target = &completed[0];
    let r = s.htmx_post(&format!("/orgs/acme/exports/{target}/delete?before={before}")).await;
    assert_eq!(r.status(), 200);
    let html = r.text().await.unwrap();
    assert!(html.contains(&format!("data-before=\"{before}\"")), "the same page");
    assert_eq!(ids_in(&html), page2, "the second page's runs");
    assert!(html.contains(&format!("data-export-id=\"{target}\" data-status=\"deleted\"")));
    // Its forms keep the page.
    assert!(html.contains(&format!("/verify?before={before}")));
}

/// The `data-version` of a history fragment or page.
fn version_in(html: &str) -> i64 {
    let rest = &html[html.find("data-version=\"").expect("the history carries its version") + 14..];
    rest[..rest.find('"').unwrap()].parse().unwrap()
}

/// An open history notices a run created anywhere (here: the API) on its next poll,
/// and each poll while nothing changed is 204 with no body. Another org's runs,
/// and a run's progress, do not wake it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_history_answers_204_until_a_run_is_created_or_changes_anywhere() {
    let app = TestApp::spawn_with(Options { members: 100, ..Default::default() }).await;
    let s = app.login("admin@acme.test").await;
    let page = s.get("/orgs/acme/settings/backups").await.text().await.unwrap();
    let v0 = version_in(&page);
    assert!(page.contains(&format!("hx-get=\"/orgs/acme/exports/history?since={v0}\"")), "the history polls");
    let poll = |v: i64| format!("/orgs/acme/exports/history?since={v}");

    for _ in 0..3 {
        let r = s.htmx_get(&poll(v0)).await;
        assert_eq!(r.status(), 204);
        assert!(r.bytes().await.unwrap().is_empty(), "an idle poll has no body");
    }
    // Another org's run does not wake acme's history.
    insert_runs(&app, "globex", 2).await;
    assert_eq!(s.htmx_get(&poll(v0)).await.status(), 204);

    // A run created through the API shows on the next poll.
    let api = api(&app, &app.token("admin@acme.test").await);
    let created: Value = api.post("/orgs/acme/exports").await.json().await.unwrap();
    let id = created["id"].as_str().unwrap().to_string();
    let r = s.htmx_get(&poll(v0)).await;
    assert_eq!(r.status(), 200);
    let html = r.text().await.unwrap();
    assert!(ids_in(&html).contains(&id), "the new run is in the refreshed history");
    let v1 = version_in(&html);
    assert!(v1 > v0);

    // Its end moves the version on too, so the open page shows it completed.
    app.wait_for_status(&id, "completed", std::time::Duration::from_secs(60)).await;
    let r = s.htmx_get(&poll(v1)).await;
    assert_eq!(r.status(), 200);
    let html = r.text().await.unwrap();
    assert!(html.contains(&format!("data-export-id=\"{id}\" data-status=\"completed\"")), "{html}");
    let v2 = version_in(&html);
    assert_eq!(s.htmx_get(&poll(v2)).await.status(), 204, "and then it is idle again");
    // Progress alone does not wake it: the active row polls itself.
    sqlx::query("update export_runs set rows_written = rows_written + 1 where id = $1")
        .bind(&id)
        .execute(app.pool())
        .await
        .unwrap();
    assert_eq!(s.htmx_get(&poll(v2)).await.status(), 204);

    // A malformed version is refused, and another org's history is not reachable.
    assert_eq!(s.htmx_get("/orgs/acme/exports/history?since=x").await.status(), 400);
    assert_eq!(s.htmx_get("/orgs/acme/exports/history?since=-1").await.status(), 400);
    assert_eq!(s.get(&format!("/orgs/globex/exports/history?since={v2}")).await.status(), 404);
    // htmx's poll of it stops (286) rather than asking again every 2 s.
    assert_eq!(s.htmx_get(&format!("/orgs/globex/exports/history?since={v2}")).await.status().as_u16(), 286);
    println!("history poll: versions {v0} -> {v1} (created) -> {v2} (completed); idle polls answered 204 with no body");
}

/// The `href`s of a privacy page's "Older" link, if it has one.
fn privacy_older(html: &str) -> Option<String> {
    let at = html.find("data-page=\"older\"")?;
    let href = html[at..].split(" href=\"").nth(1)?;
    Some(href[..href.find('"')?].replace("&amp;", "&"))
}

fn request_ids_in(html: &str) -> Vec<String> {
    html.split("data-request-id=\"").skip(1).map(|rest| rest[..26].to_string()).collect()
}

/// The data-subject histories page back the same way: a person's own requests on
/// /me/privacy, and everyone's on /platform/privacy; each request is reached once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_data_subject_request_is_reached_once_paging_both_privacy_histories() {
    let app = TestApp::spawn_with(Options { members: 20, workers: false, ..Default::default() }).await;
    let insert = |email: &'static str, n: i32| {
        let pool = app.pool().clone();
        async move {
            let ids: Vec<String> = (0..n).map(|_| ulid::Ulid::generate().to_string()).collect();
            let ages: Vec<i32> = (0..n).map(|i| i / 2).collect();
            sqlx::query(
                "insert into privacy_requests (id, user_id, requested_by, status, created_at, finished_at, error)
                 select t.id, u.id, u.id, 'failed', now() - make_interval(mins => t.age + 10),
                        now() - make_interval(mins => t.age + 9), 'The export failed.'
                 from unnest($2::text[], $3::int[]) as t(id, age), users u where u.email = $1",
            )
            .bind(email)
            .bind(&ids)
            .bind(&ages)
            .execute(&pool)
            .await
            .unwrap();
        }
    };
    insert("member@acme.test", 120).await;
    insert("admin@acme.test", 35).await;
    let ids_of = |email: Option<&'static str>| {
        let pool = app.pool().clone();
        async move {
            sqlx::query_scalar::<_, String>(
                "select r.id from privacy_requests r join users u on u.id = r.user_id
                 where $1::text is null or u.email = $1 order by r.created_at desc, r.id desc",
            )
            .bind(email)
            .fetch_all(&pool)
            .await
            .unwrap()
        }
    };
    async fn walk(s: &Session, first: &str) -> (Vec<String>, usize) {
        let (mut seen, mut pages, mut next) = (Vec::new(), 0, Some(first.to_string()));
        while let Some(path) = next.take() {
            let r = s.get(&path).await;
            assert_eq!(r.status(), 200, "{path}");
            let html = r.text().await.unwrap();
            seen.extend(request_ids_in(&html));
            next = privacy_older(&html);
            pages += 1;
        }
        (seen, pages)
    }
    let member = app.login("member@acme.test").await;
    let (seen, pages) = walk(&member, "/me/privacy").await;
    assert_eq!(seen, ids_of(Some("member@acme.test")).await, "a person reaches each of their requests once");
    assert_eq!(pages, 3);
    let platform = app.login("platform@example.test").await;
    let (seen, pages) = walk(&platform, "/platform/privacy").await;
    assert_eq!(seen, ids_of(None).await, "a platform admin reaches every request once");
    assert_eq!(pages, 4);

    // Another person's request is no page of one's own history.
    let theirs = ids_of(Some("admin@acme.test")).await.remove(0);
    let r = member.get(&format!("/me/privacy?before={theirs}")).await;
    assert_eq!(r.status(), 400);
    assert!(request_ids_in(&r.text().await.unwrap()).is_empty(), "the refusal lists no requests");
    assert_eq!(member.get("/me/privacy?before=nope").await.status(), 400);
    println!("privacy paging: 120 of one person's requests in 3 pages, 155 on the platform page in 4");
}
