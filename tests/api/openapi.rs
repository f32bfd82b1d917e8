//! The OpenAPI document (issue 33): served at `GET /api/v1/openapi.json`, the very
//! bytes of docs/openapi.json; every route of `router::API_ROUTES` is in it, and
//! nothing else; real answers of the API match its schemas.

use std::{collections::BTreeSet, time::Duration};

use data_export::{router, routes::*};
use serde_json::{Value, json};

use crate::helpers::*;

fn document() -> Value {
    serde_json::from_str(router::OPENAPI).expect("docs/openapi.json is JSON")
}

/// Follows a local `$ref` (`#/components/...`), or returns `v` itself.
fn resolve<'a>(doc: &'a Value, v: &'a Value) -> &'a Value {
    match v.get("$ref").and_then(Value::as_str) {
        Some(r) => doc.pointer(r.trim_start_matches('#')).unwrap_or_else(|| panic!("{r} resolves to nothing")),
        None => v,
    }
}

/// Every `$ref` under `v`.
fn refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("$ref", Value::String(r)) => out.push(r.clone()),
                    _ => refs(x, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
        _ => {}
    }
}

const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

#[test]
fn every_api_route_is_in_the_openapi_document_and_nothing_else() {
    let doc = document();
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(doc["servers"][0]["url"], API_PREFIX);
    assert_eq!(doc["security"], json!([{ "bearer": [] }]), "bearer auth is the default of every operation");
    assert_eq!(doc["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");
    let paths = doc["paths"].as_object().expect("paths");
    let mut missing = Vec::new();
    for (method, pattern) in router::API_ROUTES {
        let Some(op) = paths.get(*pattern).and_then(|p| p.get(method.to_lowercase())) else {
            missing.push(format!("{method} {pattern}"));
            continue;
        };
        let responses = op["responses"].as_object().expect("responses");
        assert!(responses.keys().any(|c| c.starts_with('2') || c.starts_with('3')), "{method} {pattern}: no answer");
        // Each `{name}` of the path is a declared path parameter.
        let declared: BTreeSet<&str> = [&paths[*pattern]["parameters"], &op["parameters"]]
            .into_iter()
            .filter_map(Value::as_array)
            .flatten()
            .map(|p| resolve(&doc, p))
            .filter(|p| p["in"] == "path")
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        let in_path: BTreeSet<&str> =
            pattern.split('/').filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}'))).collect();
        assert_eq!(declared, in_path, "{method} {pattern}: path parameters");
        if *pattern == API_OPENAPI {
            assert_eq!(op["security"], json!([]), "the document is public");
        } else {
            assert!(op.get("security").is_none(), "{method} {pattern} takes the bearer token");
            assert!(responses.contains_key("401"), "{method} {pattern}: its 401");
            // Every error is the JSON error, but a body over the limit (refused by the
            // body limit, before the handler).
            for (code, answer) in
                responses.iter().filter(|(c, _)| (c.starts_with('4') || c.starts_with('5')) && *c != "413")
            {
                let schema = &resolve(&doc, answer)["content"]["application/json"]["schema"];
                assert_eq!(schema["$ref"], "#/components/schemas/Error", "{method} {pattern} {code}: the error body");
            }
        }
    }
    assert!(missing.is_empty(), "routes of router::API_ROUTES missing from docs/openapi.json: {missing:?}");
    let routes: BTreeSet<(String, &str)> = router::API_ROUTES.iter().map(|(m, p)| (m.to_lowercase(), *p)).collect();
    for (pattern, item) in paths {
        for method in METHODS.iter().filter(|m| item.get(**m).is_some()) {
            assert!(routes.contains(&(method.to_string(), pattern.as_str())), "{method} {pattern} is no route");
        }
    }
    let mut all = Vec::new();
    refs(&doc, &mut all);
    for r in &all {
        assert!(r.starts_with("#/") && doc.pointer(&r[1..]).is_some(), "{r} resolves to nothing");
    }
    // Every schema compiles.
    for (name, _) in doc["components"]["schemas"].as_object().unwrap() {
        validator(&doc, &json!({ "$ref": format!("#/components/schemas/{name}") }));
    }
}

/// A validator for `schema`, its `$ref`s resolved in the document's components.
fn validator(doc: &Value, schema: &Value) -> jsonschema::Validator {
    let mut root = schema.clone();
    root["$schema"] = json!("https://json-schema.org/draft/2020-12/schema");
    root["components"] = doc["components"].clone();
    jsonschema::validator_for(&root).unwrap_or_else(|e| panic!("{schema} does not compile: {e}"))
}

/// Checks a real answer against the document: its status is one the operation
/// lists, and its JSON body matches that answer's schema.
async fn check(doc: &Value, method: &str, pattern: &str, response: reqwest::Response) -> Value {
    let status = response.status().as_u16().to_string();
    let answer = doc["paths"][pattern][method.to_lowercase()]["responses"]
        .get(&status)
        .unwrap_or_else(|| panic!("{method} {pattern} answered {status}, which the document does not list"));
    let answer = resolve(doc, answer);
    let body: Value = response.json().await.unwrap_or_else(|e| panic!("{method} {pattern}: not JSON: {e}"));
    let schema = &answer["content"]["application/json"]["schema"];
    assert!(schema.is_object(), "{method} {pattern} {status}: no schema");
    let errors: Vec<String> =
        validator(doc, schema).iter_errors(&body).take(5).map(|e| format!("{e} at {}", e.instance_path())).collect();
    assert!(errors.is_empty(), "{method} {pattern} {status}: {errors:?} in {body}");
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_answers_match_the_openapi_document() {
    let app = TestApp::spawn().await;
    let doc = document();
    // Served, to anyone, as the file.
    let served = app.client().get(app.url(&format!("{API_PREFIX}{API_OPENAPI}"))).send().await.unwrap();
    assert_eq!(served.status(), 200);
    assert_eq!(served.headers()["content-type"], "application/json");
    assert_eq!(served.text().await.unwrap(), router::OPENAPI);

    let admin = api(&app, &app.token("admin@acme.test").await);
    let created = check(&doc, "POST", API_EXPORTS, admin.post("/orgs/acme/exports").await).await;
    let id = created["id"].as_str().unwrap().to_string();
    let run = app.wait_for_run(&id, Duration::from_secs(120)).await;
    assert_eq!(run.status.as_str(), "completed");
    let list = check(&doc, "GET", API_EXPORTS, admin.get("/orgs/acme/exports").await).await;
    assert_eq!(list[0]["id"], id.as_str());
    let one = check(&doc, "GET", API_EXPORT, admin.get(&format!("/orgs/acme/exports/{id}")).await).await;
    assert!(one["counts"].is_object() && one["sha256"].is_string(), "a completed run: {one}");
    let verified = check(&doc, "POST", API_EXPORT_VERIFY, admin.post(&format!("/orgs/acme/exports/{id}/verify")).await);
    assert_eq!(verified.await["ok"], true);
    // Errors: a malformed id, no token, a member's token.
    check(&doc, "GET", API_EXPORT, admin.get("/orgs/acme/exports/not-an-id").await).await;
    let anonymous = app.client().get(app.url(&format!("{API_PREFIX}/orgs/acme/exports"))).send().await.unwrap();
    assert_eq!(check(&doc, "GET", API_EXPORTS, anonymous).await["error"], "unauthorized");
    let member = api(&app, &app.token("member@acme.test").await);
    assert_eq!(check(&doc, "GET", API_EXPORTS, member.get("/orgs/acme/exports").await).await["error"], "forbidden");
    let finished = admin.post(&format!("/orgs/acme/exports/{id}/cancel")).await;
    assert_eq!(check(&doc, "POST", API_EXPORT_CANCEL, finished).await["error"], "conflict");

    // Webhooks.
    let hook = json!({ "url": "https://hooks.example.com/in" });
    let created = check(&doc, "POST", API_WEBHOOKS, admin.post_json("/orgs/acme/webhooks", &hook).await).await;
    let hook_id = created["id"].as_str().unwrap().to_string();
    let bad = admin.post_json("/orgs/acme/webhooks", &json!({ "url": 1 })).await;
    assert_eq!(check(&doc, "POST", API_WEBHOOKS, bad).await["error"], "bad_request");
    let hooks = check(&doc, "GET", API_WEBHOOKS, admin.get("/orgs/acme/webhooks").await).await;
    assert_eq!(hooks[0]["id"], hook_id.as_str());
    let rotate = admin.post(&format!("/orgs/acme/webhooks/{hook_id}/rotate")).await;
    check(&doc, "POST", API_WEBHOOK_ROTATE, rotate).await;
    let attempts = admin.get(&format!("/orgs/acme/webhooks/{hook_id}/attempts")).await;
    check(&doc, "GET", API_WEBHOOK_ATTEMPTS, attempts).await;

    // The platform's org list, and an import that names no export.
    let platform = api(&app, &app.token("platform@example.test").await);
    let orgs = check(&doc, "GET", API_PLATFORM_ORGS, platform.get("/platform/orgs").await).await;
    assert!(orgs.as_array().is_some_and(|o| o.len() >= 2), "{orgs}");
    let bad_state = platform.get("/platform/orgs?state=sunny").await;
    assert_eq!(check(&doc, "GET", API_PLATFORM_ORGS, bad_state).await["error"], "bad_request");
    let import = check(&doc, "GET", API_IMPORT, platform.get("/platform/imports/01JAAAAAAAAAAAAAAAAAAAAAAA").await);
    assert_eq!(import.await["error"], "not_found");
    // A restore in two steps: the check, then its confirmation, each as the document says.
    let body = json!({ "source_export_id": id, "slug": "acme-restored", "name": "Acme restored" });
    let check_made = check(&doc, "POST", API_IMPORTS, platform.post_json("/platform/imports", &body).await).await;
    assert_eq!(check_made["kind"], "check");
    let check_id = check_made["id"].as_str().unwrap().to_string();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let checked = loop {
        let got = check(&doc, "GET", API_IMPORT, platform.get(&format!("/platform/imports/{check_id}")).await).await;
        if got["status"] == "completed" || got["status"] == "failed" {
            break got;
        }
        assert!(std::time::Instant::now() < deadline, "the check did not finish: {got}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(checked["status"], "completed", "{checked}");
    let confirm = platform.post(&format!("/platform/imports/{check_id}/confirm")).await;
    let confirmed = check(&doc, "POST", API_IMPORT_CONFIRM, confirm).await;
    assert_eq!((confirmed["kind"].as_str(), confirmed["check_id"].as_str()), (Some("import"), Some(check_id.as_str())));
    let again = platform.post(&format!("/platform/imports/{check_id}/confirm")).await;
    assert_eq!(check(&doc, "POST", API_IMPORT_CONFIRM, again).await["error"], "conflict");

    // Closing an org (globex: the restore above reads acme's file): the request, a
    // wrong confirmation, the cancel, and the receipt once it is erased.
    let globex = api(&app, &app.token("admin@globex.test").await);
    let wrong = globex.post_json("/orgs/globex/close", &json!({ "confirm": "acme" })).await;
    assert_eq!(check(&doc, "POST", API_ORG_CLOSE, wrong).await["error"], "bad_request");
    let not_yet = platform.get("/platform/orgs/globex/receipt").await;
    assert_eq!(check(&doc, "GET", API_PLATFORM_ORG_RECEIPT, not_yet).await["error"], "not_found");
    let confirm = json!({ "confirm": "globex" });
    let closing = check(&doc, "POST", API_ORG_CLOSE, globex.post_json("/orgs/globex/close", &confirm).await).await;
    assert_eq!(closing["state"], "closing");
    app.wait_for_run(closing["final_export_id"].as_str().unwrap(), Duration::from_secs(120)).await;
    let reopened = check(&doc, "POST", API_ORG_REOPEN, globex.post("/orgs/globex/reopen").await).await;
    assert_eq!(reopened["state"], "active");
    let again = globex.post("/orgs/globex/reopen").await;
    assert_eq!(check(&doc, "POST", API_ORG_REOPEN, again).await["error"], "conflict");
    let closing = check(&doc, "POST", API_ORG_CLOSE, globex.post_json("/orgs/globex/close", &confirm).await).await;
    app.wait_for_run(closing["final_export_id"].as_str().unwrap(), Duration::from_secs(120)).await;
    data_export::closing::erase::tick(&app.state).await.unwrap();
    sqlx::query("update organizations set close_after = now() where slug = 'globex'")
        .execute(app.pool())
        .await
        .unwrap();
    assert_eq!(data_export::closing::erase::tick(&app.state).await.unwrap().closed, 1);
    let receipt =
        check(&doc, "GET", API_PLATFORM_ORG_RECEIPT, platform.get("/platform/orgs/globex/receipt").await).await;
    assert_eq!(receipt["organization"]["slug"], "globex");
    let orgs = check(&doc, "GET", API_PLATFORM_ORGS, platform.get("/platform/orgs?state=closed").await).await;
    assert_eq!(orgs[0]["state"], "closed");
    println!(
        "openapi: {} routes described; real answers of exports, webhooks, the platform's orgs and errors match their schemas",
        router::API_ROUTES.len()
    );
}
