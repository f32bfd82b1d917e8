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
