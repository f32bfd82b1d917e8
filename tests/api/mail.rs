//! Mail against a real SMTP server (mailin-embedded, in process, on loopback): the
//! data-subject mail's headers and body, the opt-outs, a server that refuses at
//! first, one that is never reached, STARTTLS with a private CA and a password,
//! implicit TLS (`smtps://`), the outbox when `SMTP_URL` is unset, and refused
//! settings.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use data_export::{
    config::{Config, MailSettings, SmtpSecurity},
    mail::{self, Kind},
    routes::*,
};
use mailin_embedded::{AuthMechanism, Handler, Response, Server, SslConfig, response};

use crate::helpers::*;

/// A real SMTP server's mailbox. Clones share what was received; each connection
/// has its own envelope.
#[derive(Clone, Default)]
struct Inbox {
    received: Arc<Mutex<Vec<Received>>>,
    /// MAIL FROM commands still to refuse with a 451 before accepting.
    refuse: Arc<AtomicU32>,
    mail_commands: Arc<AtomicU32>,
    /// Users who authenticated.
    logins: Arc<Mutex<Vec<String>>>,
    envelope: Option<(String, Vec<String>)>,
    data: Vec<u8>,
}

#[derive(Clone, Debug)]
struct Received {
    from: String,
    to: Vec<String>,
    raw: String,
}

const USER: &str = "mailer";
/// Characters a URL must percent-encode.
const PASSWORD_IN_URL: &str = "s3cr%3At%40x";
const PASSWORD_DECODED: &str = "s3cr:t@x";

impl Handler for Inbox {
    fn mail(&mut self, _ip: std::net::IpAddr, _domain: &str, _from: &str) -> Response {
        self.mail_commands.fetch_add(1, Ordering::SeqCst);
        let refused = self.refuse.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok();
        if refused { Response::custom(451, "Try again later".into()) } else { response::OK }
    }

    fn data_start(&mut self, _domain: &str, from: &str, _is8bit: bool, to: &[String]) -> Response {
        self.envelope = Some((from.to_string(), to.to_vec()));
        self.data.clear();
        response::OK
    }

    fn data(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.data.extend_from_slice(buf);
        Ok(())
    }

    fn data_end(&mut self) -> Response {
        let (from, to) = self.envelope.take().unwrap_or_default();
        let raw = String::from_utf8_lossy(&self.data).into_owned();
        self.received.lock().unwrap().push(Received { from, to, raw });
        response::OK
    }

    fn auth_plain(&mut self, _authorization_id: &str, authentication_id: &str, password: &str) -> Response {
        if authentication_id == USER && password == PASSWORD_DECODED {
            self.logins.lock().unwrap().push(authentication_id.to_string());
            response::AUTH_OK
        } else {
            response::INVALID_CREDENTIALS
        }
    }
}

impl Inbox {
    /// Starts the server on a free loopback port (STARTTLS and AUTH PLAIN with
    /// `tls`: the certificate and key files); it runs until the test process ends.
    fn serve(&self, tls: Option<(String, String)>) -> u16 {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut server = Server::new(self.clone());
        server.with_name("mail.test").with_tcp_listener(listener).with_num_threads(2);
        match tls {
            Some((cert_path, key_path)) => {
                server.with_ssl(SslConfig::SelfSigned { cert_path, key_path }).unwrap().with_auth(AuthMechanism::Plain);
            }
            None => {
                server.with_ssl(SslConfig::None).unwrap();
            }
        }
        std::thread::spawn(move || {
            if let Err(e) = server.serve() {
                eprintln!("the test SMTP server stopped: {e}");
            }
        });
        port
    }

    /// The mails received, once there are `n`.
    async fn wait_for(&self, n: usize, within: Duration) -> Vec<Received> {
        let started = Instant::now();
        loop {
            let got = self.received.lock().unwrap().clone();
            if got.len() >= n {
                return got;
            }
            assert!(started.elapsed() < within, "{} of {n} mails received after {within:?}", got.len());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Mail settings as `Config` reads them from these variables.
fn mail_settings(vars: &[(&str, &str)]) -> anyhow::Result<MailSettings> {
    let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    Config::from_lookup(|k| map.get(k).cloned()).map(|c| c.mail)
}

/// The header fields (names lowercased, folded lines joined) and the body of a mail.
fn parse(raw: &str) -> (HashMap<String, String>, String) {
    let (head, body) = raw.split_once("\r\n\r\n").expect("a blank line ends the header");
    let mut fields: HashMap<String, String> = HashMap::new();
    let mut last = String::new();
    for line in head.split("\r\n") {
        if line.starts_with([' ', '\t']) {
            fields.get_mut(&last).expect("a continued field").push_str(line);
        } else {
            let (name, value) = line.split_once(':').unwrap_or_else(|| panic!("not a header field: {line:?}"));
            last = name.to_ascii_lowercase();
            assert!(fields.insert(last.clone(), value.trim().to_string()).is_none(), "{name} appears once");
        }
    }
    let body = body.replace("\r\n", "\n");
    let body = match fields.get("content-transfer-encoding").map(String::as_str) {
        Some("quoted-printable") => unquote(&body),
        Some("7bit") => body,
        other => panic!("an unexpected Content-Transfer-Encoding {other:?}"),
    };
    (fields, body)
}

/// Quoted-printable decoded (RFC 2045 6.7): soft line breaks dropped, `=XX` bytes.
fn unquote(body: &str) -> String {
    let joined = body.replace("=\n", "");
    let mut out = Vec::new();
    let mut bytes = joined.bytes();
    while let Some(b) = bytes.next() {
        if b == b'=' {
            let hex: String = bytes.by_ref().take(2).map(char::from).collect();
            out.push(u8::from_str_radix(&hex, 16).expect("=XX"));
        } else {
            out.push(b);
        }
    }
    String::from_utf8(out).expect("UTF-8")
}

async fn user_id(app: &TestApp, email: &str) -> i64 {
    sqlx::query_scalar("select id from users where email = $1").bind(email).fetch_one(app.pool()).await.unwrap()
}

/// (attempts, sent, failed, last_error) of each mail to `user_id`, oldest first.
async fn rows(app: &TestApp, user_id: i64) -> Vec<(String, i32, bool, bool, Option<String>)> {
    sqlx::query_as(
        "select kind, attempts, sent_at is not null, failed_at is not null, last_error from mail_messages
         where user_id = $1 order by id",
    )
    .bind(user_id)
    .fetch_all(app.pool())
    .await
    .unwrap()
}

/// Queues a mail in a transaction of its own, as a feature does in its own.
async fn enqueue(app: &TestApp, user_id: i64, kind: Kind, subject: &str) -> bool {
    let mut tx = app.pool().begin().await.unwrap();
    let message = mail::Message { kind, subject: subject.into(), text: format!("About {subject}.") };
    let queued = mail::enqueue(&mut tx, user_id, &message).await.unwrap();
    tx.commit().await.unwrap();
    queued
}

/// Asks for the member's data through the page, as they would.
async fn request_my_data(app: &TestApp) {
    let member = app.login("member@acme.test").await;
    assert_eq!(member.post_form(ME_PRIVACY, &[]).await.status(), 303);
}

/// Waits until `check` holds for the mails of `user_id`.
async fn wait_rows(
    app: &TestApp,
    user_id: i64,
    within: Duration,
    check: impl Fn(&[(String, i32, bool, bool, Option<String>)]) -> bool,
) -> Vec<(String, i32, bool, bool, Option<String>)> {
    let started = Instant::now();
    loop {
        let r = rows(app, user_id).await;
        if check(&r) {
            return r;
        }
        assert!(started.elapsed() < within, "mails of user {user_id} after {within:?}: {r:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

static PLAIN: OnceLock<MailSettings> = OnceLock::new();

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_data_request_is_mailed_with_its_headers_and_a_link_to_the_privacy_page() {
    let inbox = Inbox::default();
    let port = inbox.serve(None);
    let url = format!("smtp://127.0.0.1:{port}?tls=none");
    let from = "Data Export Test <exports@mail.test>";
    PLAIN.set(mail_settings(&[("SMTP_URL", &url), ("MAIL_FROM", from)]).unwrap()).unwrap();
    let app = TestApp::spawn_with(Options {
        config: Some(|c| {
            c.mail = PLAIN.get().unwrap().clone();
            c.public_url = "https://exports.example.test".into();
        }),
        ..Default::default()
    })
    .await;
    request_my_data(&app).await;
    let mails = inbox.wait_for(1, Duration::from_secs(60)).await;
    let mail = &mails[0];
    assert_eq!(mail.from, "exports@mail.test", "the envelope sender is MAIL_FROM's address");
    assert_eq!(mail.to, ["member@acme.test"]);
    let (h, body) = parse(&mail.raw);
    assert_eq!(h["from"], "\"Data Export Test\" <exports@mail.test>");
    assert_eq!(h["to"], "member@acme.test");
    assert_eq!(h["subject"], "Your data is ready");
    assert!(h["content-type"].starts_with("text/plain"), "{h:?}");
    let date = chrono::DateTime::parse_from_rfc2822(&h["date"]).expect("an RFC 2822 date");
    assert!((chrono::Utc::now() - date.to_utc()).num_seconds().abs() < 120, "{date}");
    let (id,): (String,) = sqlx::query_as("select id from mail_messages").fetch_one(app.pool()).await.unwrap();
    assert_eq!(h["message-id"], format!("<{id}@mail.test>"));
    assert!(body.contains("The copy of your data requested on "), "{body}");
    assert!(body.contains("https://exports.example.test/me/privacy\n"), "a link to the privacy page: {body}");
    assert!(body.contains("You get this mail because you asked for a copy of your data."), "{body}");
    assert!(!body.contains("X-Amz") && !body.contains("/download"), "never a download or presigned URL: {body}");
    let member = user_id(&app, "member@acme.test").await;
    let r = wait_rows(&app, member, Duration::from_secs(10), |r| r.iter().all(|m| m.2)).await;
    assert_eq!(r, [("privacy".to_string(), 1, true, false, None)], "one attempt, recorded as sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kind_switched_off_is_not_queued_and_the_data_request_mail_is_sent_regardless() {
    let app = TestApp::spawn().await;
    let member = app.login("member@acme.test").await;
    let page = member.get(ME_NOTIFICATIONS).await.text().await.unwrap();
    for kind in ["export_failed", "export_completed_mine", "webhook", "schedule"] {
        assert!(page.contains(&format!(r#"name="{kind}" value="on" checked"#)), "{kind} is on by default: {page}");
    }
    assert!(
        page.contains(r#"name="export_completed_scheduled" value="on">"#),
        "completed scheduled exports are off by default: {page}"
    );
    assert!(page.contains("Always sent"), "the data-subject mail cannot be switched off");
    // Bad input is refused and changes nothing; the old field is gone.
    for bad in [
        vec![("export_failed", "yes")],
        vec![("privacy", "on")],
        vec![("export", "on")],
        vec![("export_failed", "on"), ("export_failed", "on")],
    ] {
        let r = member.post_form(ME_NOTIFICATIONS, &bad).await;
        assert_eq!(r.status(), 400, "{bad:?}");
        assert!(r.text().await.unwrap().contains("nothing was changed"), "{bad:?}");
    }
    let id = user_id(&app, "member@acme.test").await;
    let defaults = [
        Kind::ExportFailed,
        Kind::ExportCompletedMine,
        Kind::WebhookFailing,
        Kind::ScheduleFailures,
        Kind::PrivacyRequest,
        Kind::OrgClosed,
    ];
    assert_eq!(mail::wanted(app.pool(), id).await.unwrap(), defaults);
    // Only webhook mails and completed scheduled exports ticked: the rest is off.
    let r = member.post_form(ME_NOTIFICATIONS, &[("webhook", "on"), ("export_completed_scheduled", "on")]).await;
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], format!("{ME_NOTIFICATIONS}?done=saved"));
    let page = member.get(&format!("{ME_NOTIFICATIONS}?done=saved")).await.text().await.unwrap();
    assert!(page.contains("Saved."), "{page}");
    assert!(page.contains(r#"name="export_failed" value="on">"#), "{page}");
    assert!(page.contains(r#"name="webhook" value="on" checked"#), "{page}");
    assert!(page.contains(r#"name="export_completed_scheduled" value="on" checked"#), "{page}");
    assert_eq!(
        mail::wanted(app.pool(), id).await.unwrap(),
        [Kind::ExportCompletedScheduled, Kind::WebhookFailing, Kind::PrivacyRequest, Kind::OrgClosed]
    );
    // Another person's settings are theirs.
    let admin = user_id(&app, "admin@acme.test").await;
    assert_eq!(mail::wanted(app.pool(), admin).await.unwrap(), defaults);

    assert!(!enqueue(&app, id, Kind::ExportFailed, "a failed export").await, "switched off: skipped");
    assert!(!enqueue(&app, id, Kind::ExportCompletedMine, "my export").await, "switched off: skipped");
    assert!(!enqueue(&app, id, Kind::ScheduleFailures, "a slot").await, "switched off: skipped");
    assert!(enqueue(&app, id, Kind::WebhookFailing, "a webhook").await);
    assert!(enqueue(&app, id, Kind::ExportCompletedScheduled, "a scheduled export").await, "switched on");
    assert!(enqueue(&app, admin, Kind::ExportFailed, "a failed export").await, "the admin did not switch it off");
    assert!(
        !enqueue(&app, admin, Kind::ExportCompletedScheduled, "a scheduled export").await,
        "the admin did not switch it on"
    );
    assert!(!enqueue(&app, i64::MAX, Kind::PrivacyRequest, "nobody").await, "no such user");
    request_my_data(&app).await;
    let r = wait_rows(&app, id, Duration::from_secs(60), |r| r.len() == 3 && r.iter().all(|m| m.2)).await;
    let kinds: Vec<&str> = r.iter().map(|m| m.0.as_str()).collect();
    assert_eq!(
        kinds,
        ["webhook", "export_completed_scheduled", "privacy"],
        "nothing of the kinds switched off; the data mail regardless"
    );
    // The page lists them as sent.
    let page = member.get(ME_NOTIFICATIONS).await.text().await.unwrap();
    assert!(page.contains("Your data is ready") && page.contains("a webhook") && page.contains(">sent<"), "{page}");

    // Everything on, then nothing: the kind that is off by default goes back off.
    let all: Vec<(&str, &str)> = Kind::ALL.iter().filter(|k| k.can_opt_out()).map(|k| (k.key(), "on")).collect();
    assert_eq!(member.post_form(ME_NOTIFICATIONS, &all).await.status(), 303);
    assert_eq!(mail::wanted(app.pool(), id).await.unwrap(), Kind::ALL);
    assert!(enqueue(&app, id, Kind::ExportFailed, "a failed export").await);
    assert_eq!(member.post_form(ME_NOTIFICATIONS, &[]).await.status(), 303);
    assert_eq!(mail::wanted(app.pool(), id).await.unwrap(), [Kind::PrivacyRequest, Kind::OrgClosed]);
    assert!(!enqueue(&app, id, Kind::ExportCompletedScheduled, "a scheduled export").await);
}

static FLAKY: OnceLock<MailSettings> = OnceLock::new();

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_refuses_at_first_gets_the_mail_on_a_later_retry() {
    let inbox = Inbox::default();
    inbox.refuse.store(2, Ordering::SeqCst);
    let port = inbox.serve(None);
    let url = format!("smtp://127.0.0.1:{port}?tls=none");
    FLAKY.set(mail_settings(&[("SMTP_URL", &url), ("MAIL_RETRY_SCHEDULE_SECS", "1,1,1")]).unwrap()).unwrap();
    let app =
        TestApp::spawn_with(Options { config: Some(|c| c.mail = FLAKY.get().unwrap().clone()), ..Default::default() })
            .await;
    let admin = user_id(&app, "admin@acme.test").await;
    let started = Instant::now();
    assert!(enqueue(&app, admin, Kind::ExportCompletedMine, "Export of acme completed").await);
    // The first two attempts are refused and recorded, each with the server's answer.
    let r = wait_rows(&app, admin, Duration::from_secs(30), |r| r[0].1 >= 1 && !r[0].2).await;
    assert!(r[0].4.as_deref().is_some_and(|e| e.contains("451")), "the server's answer is kept: {r:?}");
    let mails = inbox.wait_for(1, Duration::from_secs(60)).await;
    assert!(started.elapsed() >= Duration::from_secs(2), "two waits of a second before the third attempt");
    assert_eq!(inbox.mail_commands.load(Ordering::SeqCst), 3, "refused twice, then accepted");
    assert_eq!(parse(&mails[0].raw).0["subject"], "Export of acme completed");
    let r = wait_rows(&app, admin, Duration::from_secs(10), |r| r[0].2).await;
    assert_eq!(r, [("export_completed_mine".to_string(), 3, true, false, None)]);
    assert_eq!(inbox.wait_for(1, Duration::ZERO).await.len(), 1, "sent once");
}

static DEAD: OnceLock<MailSettings> = OnceLock::new();

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mail_is_given_up_after_its_last_retry_and_the_work_that_queued_it_goes_on() {
    // A port nothing listens on: every connection is refused.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("smtp://127.0.0.1:{port}");
    DEAD.set(mail_settings(&[("SMTP_URL", &url), ("MAIL_RETRY_SCHEDULE_SECS", "1")]).unwrap()).unwrap();
    let app =
        TestApp::spawn_with(Options { config: Some(|c| c.mail = DEAD.get().unwrap().clone()), ..Default::default() })
            .await;
    request_my_data(&app).await;
    let member = user_id(&app, "member@acme.test").await;
    let r = wait_rows(&app, member, Duration::from_secs(60), |r| r.len() == 1 && r[0].3).await;
    assert_eq!((r[0].1, r[0].2), (2, false), "two attempts, then given up: {r:?}");
    assert!(r[0].4.as_deref().is_some_and(|e| e.contains(&format!("127.0.0.1:{port}"))), "{r:?}");
    let (status,): (String,) =
        sqlx::query_as("select status from privacy_requests").fetch_one(app.pool()).await.unwrap();
    assert_eq!(status, "completed", "the request completed although its mail could not be sent");
    let page = app.login("member@acme.test").await.get(ME_NOTIFICATIONS).await.text().await.unwrap();
    assert!(page.contains("not delivered after 2 attempts"), "{page}");
}

static STRIPPED: OnceLock<MailSettings> = OnceLock::new();
static OPPORTUNISTIC: OnceLock<MailSettings> = OnceLock::new();

/// Issue 33, 5.2: a plain `smtp://host` insists on STARTTLS. A server that does not
/// offer it (here: one without TLS, as a path that strips the offer makes any
/// server look) gets no mail and the attempt says why; sending in clear when
/// STARTTLS is not offered takes `?tls=opportunistic`, by name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_smtp_url_requires_starttls_and_opportunistic_tls_is_asked_for_by_name() {
    let inbox = Inbox::default();
    let port = inbox.serve(None);
    let url = format!("smtp://127.0.0.1:{port}");
    let settings = mail_settings(&[("SMTP_URL", &url), ("MAIL_RETRY_SCHEDULE_SECS", "60")]).unwrap();
    assert_eq!(settings.smtp.as_ref().unwrap().security, SmtpSecurity::StartTlsRequired);
    STRIPPED.set(settings).unwrap();
    let app = TestApp::spawn_with(Options {
        config: Some(|c| c.mail = STRIPPED.get().unwrap().clone()),
        ..Default::default()
    })
    .await;
    let admin = user_id(&app, "admin@acme.test").await;
    assert!(enqueue(&app, admin, Kind::ExportFailed, "Never in clear").await);
    let r = wait_rows(&app, admin, Duration::from_secs(30), |r| r[0].1 == 1).await;
    assert!(!r[0].2, "not sent: {r:?}");
    let error = r[0].4.clone().unwrap_or_default();
    assert!(error.to_lowercase().contains("tls"), "the attempt says STARTTLS was missing: {error}");
    assert_eq!(inbox.mail_commands.load(Ordering::SeqCst), 0, "not even the envelope went in clear");

    // Asked for by name, the same server gets the mail in clear.
    let url = format!("smtp://127.0.0.1:{port}?tls=opportunistic");
    let settings = mail_settings(&[("SMTP_URL", &url)]).unwrap();
    assert_eq!(settings.smtp.as_ref().unwrap().security, SmtpSecurity::StartTlsWhenOffered);
    OPPORTUNISTIC.set(settings).unwrap();
    let app = TestApp::spawn_with(Options {
        config: Some(|c| c.mail = OPPORTUNISTIC.get().unwrap().clone()),
        ..Default::default()
    })
    .await;
    let admin = user_id(&app, "admin@acme.test").await;
    assert!(enqueue(&app, admin, Kind::ExportFailed, "In clear, as asked").await);
    let mails = inbox.wait_for(1, Duration::from_secs(30)).await;
    assert_eq!(parse(&mails[0].raw).0["subject"], "In clear, as asked");
    println!("SMTP: smtp://host to a server without STARTTLS: not sent ({error}); ?tls=opportunistic: sent in clear");
}

/// A TLS front on a free loopback port for the plain SMTP server on `plain_port`:
/// the server as an `smtps://` (implicit TLS) client sees it.
async fn tls_front(cert_pem: &str, key_pem: &str, plain_port: u16) -> u16 {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
    let certs = CertificateDer::pem_slice_iter(cert_pem.as_bytes()).collect::<Result<Vec<_>, _>>().unwrap();
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let (Ok(mut tls), Ok(mut plain)) =
                    (acceptor.accept(tcp).await, tokio::net::TcpStream::connect(("127.0.0.1", plain_port)).await)
                else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    port
}

static TLS: OnceLock<MailSettings> = OnceLock::new();
static TLS_UNTRUSTED: OnceLock<MailSettings> = OnceLock::new();
static TLS_IMPLICIT: OnceLock<MailSettings> = OnceLock::new();

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_goes_over_starttls_with_a_password_and_over_implicit_tls_to_servers_of_a_private_ca() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    // A private CA and the server's certificate for 127.0.0.1, signed by it.
    let ca = crate::helpers::PrivateCa::new("dxtest-smtp");
    let path = |name: &str| ca.path(name);

    let inbox = Inbox::default();
    let port = inbox.serve(Some((path("cert.pem"), path("key.pem"))));
    let url = format!("smtp://{USER}:{PASSWORD_IN_URL}@127.0.0.1:{port}?tls=required");
    let settings = mail_settings(&[("SMTP_URL", &url), ("SMTP_CA_FILE", &path("ca.pem"))]).unwrap();
    let smtp = settings.smtp.as_ref().unwrap();
    assert_eq!(smtp.security, SmtpSecurity::StartTlsRequired);
    assert_eq!(smtp.credentials, Some((USER.to_string(), PASSWORD_DECODED.to_string())));
    assert!(!format!("{settings:?}").contains(PASSWORD_DECODED), "the password is never printed");
    TLS.set(settings).unwrap();
    // The same server without the CA: its certificate is refused, nothing is sent.
    TLS_UNTRUSTED.set(mail_settings(&[("SMTP_URL", &url), ("MAIL_RETRY_SCHEDULE_SECS", "60")]).unwrap()).unwrap();

    let app =
        TestApp::spawn_with(Options { config: Some(|c| c.mail = TLS.get().unwrap().clone()), ..Default::default() })
            .await;
    let admin = user_id(&app, "admin@acme.test").await;
    assert!(enqueue(&app, admin, Kind::WebhookFailing, "A webhook is failing").await);
    let mails = inbox.wait_for(1, Duration::from_secs(30)).await;
    assert_eq!(parse(&mails[0].raw).0["subject"], "A webhook is failing");
    assert_eq!(*inbox.logins.lock().unwrap(), [USER], "authenticated, which the server allows only after STARTTLS");

    let untrusting = TestApp::spawn_with(Options {
        config: Some(|c| c.mail = TLS_UNTRUSTED.get().unwrap().clone()),
        ..Default::default()
    })
    .await;
    let admin = user_id(&untrusting, "admin@acme.test").await;
    assert!(enqueue(&untrusting, admin, Kind::WebhookFailing, "Not to be sent").await);
    let r = wait_rows(&untrusting, admin, Duration::from_secs(30), |r| r[0].1 == 1).await;
    let error = r[0].4.clone().unwrap_or_default();
    assert!(error.to_lowercase().contains("certificate"), "the certificate is refused: {error}");
    assert_eq!(inbox.received.lock().unwrap().len(), 1, "nothing more arrived");

    // smtps://: TLS from the first byte, to a plain server behind a TLS front.
    let behind = Inbox::default();
    let front = tls_front(
        &std::fs::read_to_string(path("cert.pem")).unwrap(),
        &std::fs::read_to_string(path("key.pem")).unwrap(),
        behind.serve(None),
    )
    .await;
    let url = format!("smtps://127.0.0.1:{front}");
    let settings = mail_settings(&[("SMTP_URL", &url), ("SMTP_CA_FILE", &path("ca.pem"))]).unwrap();
    assert_eq!(settings.smtp.as_ref().unwrap().security, SmtpSecurity::ImplicitTls);
    TLS_IMPLICIT.set(settings).unwrap();
    let implicit = TestApp::spawn_with(Options {
        config: Some(|c| c.mail = TLS_IMPLICIT.get().unwrap().clone()),
        ..Default::default()
    })
    .await;
    let admin = user_id(&implicit, "admin@acme.test").await;
    assert!(enqueue(&implicit, admin, Kind::ExportFailed, "Over implicit TLS").await);
    let mails = behind.wait_for(1, Duration::from_secs(30)).await;
    assert_eq!(parse(&mails[0].raw).0["subject"], "Over implicit TLS");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_smtp_url_mails_are_written_to_the_outbox_as_eml_files() {
    let app = TestApp::spawn().await;
    assert!(app.state.config.mail.smtp.is_none());
    let admin = user_id(&app, "admin@acme.test").await;
    let platform = user_id(&app, "platform@example.test").await;
    let mut conn = app.pool().acquire().await.unwrap();
    assert_eq!(mail::platform_admins(&mut conn).await.unwrap(), [platform]);
    let acme = app.org_id("acme").await;
    assert_eq!(mail::org_admins(&mut conn, acme).await.unwrap(), [admin]);
    drop(conn);
    // A mail queued in a transaction that rolls back is never sent.
    let mut tx = app.pool().begin().await.unwrap();
    let message = mail::Message { kind: Kind::ExportFailed, subject: "Rolled back".into(), text: "No.".into() };
    assert!(mail::enqueue(&mut tx, admin, &message).await.unwrap());
    tx.rollback().await.unwrap();
    assert!(enqueue(&app, admin, Kind::ExportFailed, "Export of acme failed").await);
    let r = wait_rows(&app, admin, Duration::from_secs(30), |r| r.len() == 1 && r[0].2).await;
    assert_eq!(r[0].1, 1);
    let (id,): (String,) = sqlx::query_as("select id from mail_messages").fetch_one(app.pool()).await.unwrap();
    let outbox = app.storage_dir.join("outbox");
    let names: Vec<String> =
        std::fs::read_dir(&outbox).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    assert_eq!(names, [format!("{id}.eml")], "one file, named by the mail's ULID, no temporary file left");
    let raw = std::fs::read_to_string(outbox.join(&names[0])).unwrap();
    let (h, body) = parse(&raw);
    assert_eq!(h["from"], "\"Data Export\" <data-export@localhost>", "the default MAIL_FROM");
    assert_eq!(h["to"], "admin@acme.test");
    assert_eq!(h["subject"], "Export of acme failed");
    assert_eq!(h["message-id"], format!("<{id}@localhost>"));
    chrono::DateTime::parse_from_rfc2822(&h["date"]).expect("an RFC 2822 date");
    assert!(body.starts_with("About Export of acme failed.\n"), "{body}");
    let switch_off =
        format!("You can switch off mails like this one at\n{}{ME_NOTIFICATIONS}\n", app.state.config.public_url);
    assert!(body.contains(&switch_off), "{body}");
}

#[test]
fn bad_mail_settings_are_refused_with_a_message_naming_the_variable() {
    for (vars, needle) in [
        (vec![("SMTP_URL", "mail.example.com:25")], "SMTP_URL"),
        (vec![("SMTP_URL", "http://mail.example.com")], "SMTP_URL must start with smtp:// or smtps://"),
        (vec![("SMTP_URL", "smtp://")], "SMTP_URL"),
        (vec![("SMTP_URL", "smtp://mail.example.com:99999")], "SMTP_URL"),
        (vec![("SMTP_URL", "smtp://mail.example.com/inbox")], "SMTP_URL must have no path"),
        (vec![("SMTP_URL", "smtp://mail.example.com?tls=maybe")], "tls="),
        (vec![("SMTP_URL", "smtp://mail.example.com?port=1")], "SMTP_URL"),
        (vec![("SMTP_URL", "smtp://user@mail.example.com")], "both a user and a password"),
        (vec![("SMTP_URL", "smtp://u:p@mail.example.com?tls=none")], "in clear"),
        (vec![("SMTP_URL", "smtp://u:p@mail.example.com?tls=opportunistic")], "in clear"),
        (vec![("MAIL_FROM", "not an address")], "MAIL_FROM"),
        (vec![("MAIL_FROM", "Ops <ops@>")], "MAIL_FROM"),
        (vec![("MAIL_RETRY_SCHEDULE_SECS", "30,2m")], "MAIL_RETRY_SCHEDULE_SECS"),
        (vec![("MAIL_RETRY_SCHEDULE_SECS", "0")], "MAIL_RETRY_SCHEDULE_SECS"),
        (vec![("SMTP_URL", "smtps://mail.example.com"), ("SMTP_CA_FILE", "/nonexistent/ca.pem")], "SMTP_CA_FILE"),
        (vec![("SMTP_URL", "smtps://mail.example.com"), ("SMTP_CA_FILE", "/etc/hostname")], "SMTP_CA_FILE"),
    ] {
        let err = format!("{:#}", mail_settings(&vars).unwrap_err());
        assert!(err.contains(needle), "{vars:?}: {err:?} should say {needle:?}");
    }
    // A password in a refused URL is not repeated.
    let err = format!("{:#}", mail_settings(&[("SMTP_URL", "smtp://u:hunter2@mail.example.com/x")]).unwrap_err());
    assert!(!err.contains("hunter2"), "{err}");
    // The accepted forms.
    for (url, security, port) in [
        ("smtp://mail.example.com", SmtpSecurity::StartTlsRequired, 25),
        ("smtp://mail.example.com?tls=opportunistic", SmtpSecurity::StartTlsWhenOffered, 25),
        ("smtp://u:p@mail.example.com", SmtpSecurity::StartTlsRequired, 25),
        ("smtp://mail.example.com:2525?tls=none", SmtpSecurity::Plain, 2525),
        ("smtp://mail.example.com?tls=required", SmtpSecurity::StartTlsRequired, 587),
        ("smtps://u:p%40ss@mail.example.com", SmtpSecurity::ImplicitTls, 465),
        ("smtp://[::1]:1025?tls=none", SmtpSecurity::Plain, 1025),
    ] {
        let smtp = mail_settings(&[("SMTP_URL", url)]).unwrap().smtp.unwrap();
        assert_eq!((smtp.security, smtp.port), (security, port), "{url}");
    }
    let defaults = mail_settings(&[]).unwrap();
    assert!(defaults.smtp.is_none());
    assert_eq!(defaults.from.to_string(), "Data Export <data-export@localhost>");
    assert_eq!(defaults.retry_schedule.iter().map(Duration::as_secs).collect::<Vec<_>>(), [30, 120, 600, 3600, 21600]);
}

/// The binary refuses to start on a bad SMTP_URL, saying which variable and why.
#[test]
fn the_server_does_not_start_on_a_bad_smtp_url() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_data-export"))
        .arg("serve")
        .env("SMTP_URL", "smtp://mail.example.com?tls=sometimes")
        .env("DATA_DIR", std::env::temp_dir().join(format!("dxtest-bad-smtp-{}", ulid::Ulid::generate())))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("SMTP_URL") && stderr.contains("sometimes"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// The mails queued for `email`: (kind, subject, body), oldest first.
async fn queued(app: &TestApp, email: &str) -> Vec<(String, String, String)> {
    sqlx::query_as(
        "select m.kind, m.subject, m.body from mail_messages m join users u on u.id = m.user_id
         where u.email = $1 order by m.created_at, m.id",
    )
    .bind(email)
    .fetch_all(app.pool())
    .await
    .unwrap()
}

/// Puts a pending run in `running` for attempt 1 and completes it as its job would.
async fn complete_run(app: &TestApp, id: &str) {
    sqlx::query("update export_runs set status = 'running', attempts = 1, started_at = now() where id = $1")
        .bind(id)
        .execute(app.pool())
        .await
        .unwrap();
    let written = data_export::exports::runs::Written {
        key: "exports/x.json.gz",
        size_bytes: 2048,
        sha256: &"a".repeat(64),
        rows: 77,
    };
    assert!(
        data_export::exports::runs::complete(app.pool(), &app.state.config.public_url, id, 1, written).await.unwrap()
    );
}

/// Sets `email`'s role and status in the org `slug`.
async fn set_membership(app: &TestApp, email: &str, slug: &str, role: &str, status: &str) {
    let changed = sqlx::query(
        "update memberships set role = $3, status = $4
         where org_id = (select id from organizations where slug = $2) and user_id = (select id from users where email = $1)",
    )
    .bind(email)
    .bind(slug)
    .bind(role)
    .bind(status)
    .execute(app.pool())
    .await
    .unwrap();
    assert_eq!(changed.rows_affected(), 1, "{email} is a member of {slug}");
}

/// How many mails about exports (every kind `export%`) are queued, for anyone.
async fn export_mails(app: &TestApp) -> i64 {
    sqlx::query_scalar("select count(*) from mail_messages where kind like 'export%'")
        .fetch_one(app.pool())
        .await
        .unwrap()
}

/// Claims and fires a schedule slot `hours` after today's midnight; its runs by org slug.
async fn fire(app: &TestApp, hours: i64) -> (chrono::DateTime<chrono::Utc>, HashMap<String, String>) {
    let slot = chrono::Utc::now().date_naive().and_hms_opt(0, 0, 0).unwrap().and_utc() + chrono::Duration::hours(hours);
    claim_slot(app, slot).await;
    let fired = data_export::platform::scheduler::fire_slot(&app.state, slot).await.unwrap();
    assert_eq!(fired.started, ["acme", "globex"]);
    let runs: Vec<(String, String)> = sqlx::query_as(
        "select o.slug, r.id from export_runs r join organizations o on o.id = r.org_id where r.scheduled_for = $1",
    )
    .bind(slot)
    .fetch_all(app.pool())
    .await
    .unwrap();
    (slot, runs.into_iter().collect())
}

async fn fail_run(app: &TestApp, id: &str, reason: &str) {
    let failure = data_export::snapshot::job::Failure::plain(reason);
    assert!(
        data_export::exports::runs::fail(app.pool(), &app.state.config.public_url, id, None, &failure).await.unwrap()
    );
}

/// A manual export of acme started through the API by `email`; its id.
async fn start_manual(app: &TestApp, email: &str) -> String {
    let created: serde_json::Value =
        api(app, &app.token(email).await).post("/orgs/acme/exports").await.json().await.unwrap();
    created["id"].as_str().unwrap().to_string()
}

/// The schedule's defaults: a slot whose exports all complete queues no mail for
/// anyone (org admins, members, platform admins); a slot where acme's export fails
/// mails that failure once to each active admin of acme (two here), not to a lapsed
/// admin, a member or another org's admin, with a link to the history and never a
/// download URL; and the platform admins get one mail for the slot, listing acme.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_scheduled_slot_mails_no_one_and_a_failed_scheduled_run_mails_each_admin_once() {
    let app = TestApp::spawn_with(Options { members: 20, workers: false, ..Default::default() }).await;
    set_membership(&app, "member1@acme.test", "acme", "admin", "active").await;
    set_membership(&app, "member2@acme.test", "acme", "admin", "lapsed").await;

    let (_, runs) = fire(&app, 3).await;
    for id in runs.values() {
        complete_run(&app, id).await;
    }
    let all: i64 = sqlx::query_scalar("select count(*) from mail_messages").fetch_one(app.pool()).await.unwrap();
    assert_eq!(all, 0, "a clean scheduled slot queues no mail");

    let (_, runs) = fire(&app, 15).await;
    complete_run(&app, &runs["globex"]).await;
    assert_eq!(export_mails(&app).await, 0, "globex's completion mails nobody");
    fail_run(&app, &runs["acme"], "The export failed: the test said so.").await;
    for admin in ["admin@acme.test", "member1@acme.test"] {
        let mails = queued(&app, admin).await;
        assert_eq!(mails.len(), 1, "{admin}: {mails:?}");
        let (kind, subject, body) = &mails[0];
        assert_eq!((kind.as_str(), subject.as_str()), ("export_failed", "Export of Acme Association failed"));
        let history = format!("{}/orgs/acme/settings/backups", app.state.config.public_url);
        assert!(body.starts_with("The scheduled export"), "{body}");
        assert!(body.contains(&history) && body.contains("The export failed: the test said so."), "{body}");
        assert!(body.contains(&runs["acme"]) && body.contains("as an admin of Acme Association"), "{body}");
        assert!(!body.contains("X-Amz") && !body.contains("/download"), "never a download URL: {body}");
    }
    for nobody in ["member2@acme.test", "member@acme.test", "admin@globex.test"] {
        assert!(queued(&app, nobody).await.is_empty(), "{nobody} gets no export mail");
    }
    assert_eq!(export_mails(&app).await, 2, "one per active admin of acme");

    let digest = queued(&app, "platform@example.test").await;
    assert_eq!(digest.len(), 1, "one mail for the slot");
    let (kind, subject, body) = &digest[0];
    assert_eq!(kind, "schedule");
    assert!(subject.ends_with("1 of 2 failed"), "{subject}");
    assert!(
        body.contains("- Acme Association (acme): The export failed: the test said so.") && !body.contains("(globex)"),
        "{body}"
    );
    assert!(body.contains(&format!("{}/platform/settings", app.state.config.public_url)));

    // Failures switched off on the page: no more for that person, still for the other admin.
    let s = app.login("admin@acme.test").await;
    assert_eq!(s.post_form(ME_NOTIFICATIONS, &[("export_completed_mine", "on")]).await.status(), 303);
    let (_, runs) = fire(&app, 21).await;
    fail_run(&app, &runs["acme"], "The export failed again.").await;
    assert_eq!(queued(&app, "admin@acme.test").await.len(), 1, "switched off: not queued");
    assert_eq!(queued(&app, "member1@acme.test").await.len(), 2);
    println!("scheduled slots: 0 mails for a clean slot; 1 per active org admin for a failure; 1 digest per slot");
}

/// A completed manual export mails the admin who started it and no other admin,
/// only while they are still an active admin of the org (not once demoted to
/// member, nor once their membership lapsed); one started from the command line
/// mails nobody; a failed manual export mails every active admin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completed_manual_export_mails_only_its_starter_while_still_an_admin() {
    let app = TestApp::spawn_with(Options { members: 20, workers: false, ..Default::default() }).await;
    set_membership(&app, "member1@acme.test", "acme", "admin", "active").await;

    let id = start_manual(&app, "admin@acme.test").await;
    complete_run(&app, &id).await;
    let mails = queued(&app, "admin@acme.test").await;
    assert_eq!(mails.len(), 1, "{mails:?}");
    let (kind, subject, body) = &mails[0];
    assert_eq!((kind.as_str(), subject.as_str()), ("export_completed_mine", "Export of Acme Association completed"));
    assert!(body.starts_with(&format!("The export {id} of Acme Association")), "{body}");
    assert!(body.contains("77 rows") && body.contains("because you started this export"), "{body}");
    assert!(!body.contains("X-Amz") && !body.contains("/download"), "never a download URL: {body}");
    assert_eq!(export_mails(&app).await, 1, "no other admin, no member gets it");

    // Demoted to member, or lapsed, before the export completes: no mail.
    for (role, status) in [("member", "active"), ("admin", "lapsed"), ("admin", "suspended")] {
        let id = start_manual(&app, "admin@acme.test").await;
        set_membership(&app, "admin@acme.test", "acme", role, status).await;
        complete_run(&app, &id).await;
        set_membership(&app, "admin@acme.test", "acme", "admin", "active").await;
        assert_eq!(export_mails(&app).await, 1, "{role} {status}: no mail");
    }
    // Started from the command line: nobody is waiting for it.
    let acme = app.org_id("acme").await;
    let cli = data_export::exports::start::create_manual_unattributed(app.pool(), acme, 3).await.unwrap();
    complete_run(&app, &cli.id).await;
    assert_eq!(export_mails(&app).await, 1, "a run from the command line mails nobody when it completes");
    // The other admin's own run is theirs.
    let theirs = start_manual(&app, "member1@acme.test").await;
    complete_run(&app, &theirs).await;
    assert_eq!(queued(&app, "member1@acme.test").await.len(), 1);
    assert_eq!(queued(&app, "admin@acme.test").await.len(), 1);
    // A failed manual run: every active admin.
    let failed = start_manual(&app, "admin@acme.test").await;
    fail_run(&app, &failed, "The export failed: a manual one.").await;
    for admin in ["admin@acme.test", "member1@acme.test"] {
        let mails = queued(&app, admin).await;
        assert_eq!(mails.last().unwrap().0, "export_failed", "{admin}: {mails:?}");
    }
    assert!(queued(&app, "member@acme.test").await.is_empty());
    assert_eq!(export_mails(&app).await, 4);
}

/// Completed scheduled exports are mailed only to the org's admins who switched
/// them on: not to other admins, not to a member who ticked them (only admins may
/// get them), and no more once switched off again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completed_scheduled_exports_are_mailed_to_the_admins_who_switch_them_on() {
    let app = TestApp::spawn_with(Options { members: 20, workers: false, ..Default::default() }).await;
    let on = [("export_failed", "on"), ("export_completed_mine", "on"), ("export_completed_scheduled", "on")];
    for email in ["admin@acme.test", "member@acme.test"] {
        let s = app.login(email).await;
        assert_eq!(s.post_form(ME_NOTIFICATIONS, &on).await.status(), 303);
    }
    let (_, runs) = fire(&app, 3).await;
    for id in runs.values() {
        complete_run(&app, id).await;
    }
    let mails = queued(&app, "admin@acme.test").await;
    assert_eq!(mails.len(), 1, "{mails:?}");
    let (kind, subject, body) = &mails[0];
    assert_eq!(
        (kind.as_str(), subject.as_str()),
        ("export_completed_scheduled", "Export of Acme Association completed")
    );
    assert!(body.starts_with("The scheduled export") && body.contains(&runs["acme"]), "{body}");
    assert!(body.contains("who asked for completed scheduled exports"), "{body}");
    assert!(queued(&app, "admin@globex.test").await.is_empty(), "globex's admin did not switch it on");
    assert!(queued(&app, "member@acme.test").await.is_empty(), "a member gets none, whatever they ticked");

    // Switched off again: the next slot mails nobody.
    let s = app.login("admin@acme.test").await;
    assert_eq!(s.post_form(ME_NOTIFICATIONS, &on[..2]).await.status(), 303);
    let (_, runs) = fire(&app, 15).await;
    for id in runs.values() {
        complete_run(&app, id).await;
    }
    assert_eq!(export_mails(&app).await, 1);
}

/// The migration that split the kinds: a person who had switched "Exports" off
/// is off for failed exports and for their own completed exports, and (as
/// everyone) for completed scheduled exports; their other choices and other
/// people's stay as they were; mails queued before keep their kind; 'export' can
/// no longer be chosen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_earlier_exports_opt_out_carries_over_to_both_new_kinds() {
    const SPLIT: i64 = 20261207000020;
    let server = server_url();
    let admin = data_export::db::connect(data_export::db::parse_url(&server).unwrap(), 2).await.unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let name = format!("dxtest_{now}_{}", ulid::Ulid::generate().to_string().to_lowercase());
    sqlx::query(sqlx::AssertSqlSafe(format!("create database {name}"))).execute(&admin).await.unwrap();
    let pool = data_export::db::connect(data_export::db::parse_url(&server).unwrap().database(&name), 2).await.unwrap();
    let migrations: Vec<_> = data_export::db::MIGRATOR.iter().collect();
    assert!(migrations.iter().any(|m| m.version == SPLIT));
    for m in migrations.iter().filter(|m| m.version < SPLIT) {
        sqlx::raw_sql(m.sql.clone()).execute(&pool).await.unwrap();
    }
    // Before: quiet@ switched exports and webhooks off, busy@ only the slot mail,
    // and a mail about an export is still queued for quiet@.
    sqlx::raw_sql(
        "insert into users (email, display_name, password_hash) values
             ('quiet@example.test', 'Quiet', '!'), ('busy@example.test', 'Busy', '!');
         insert into mail_opt_outs (user_id, kind, created_at)
         select u.id, k, '2026-12-01T00:00:00Z' from users u,
                (values ('quiet@example.test', 'export'), ('quiet@example.test', 'webhook'),
                        ('busy@example.test', 'schedule')) v(e, k)
         where u.email = v.e;
         insert into mail_messages (id, user_id, kind, recipient, subject, body)
         select '01JAAAAAAAAAAAAAAAAAAAAAAA', id, 'export', email, 'Export of Acme completed', 'Old.' from users
         where email = 'quiet@example.test'",
    )
    .execute(&pool)
    .await
    .unwrap();
    for m in migrations.iter().filter(|m| m.version >= SPLIT) {
        sqlx::raw_sql(m.sql.clone()).execute(&pool).await.unwrap();
    }
    let outs: Vec<(String, String, chrono::DateTime<chrono::Utc>)> = sqlx::query_as(
        "select u.email, o.kind, o.created_at from mail_opt_outs o join users u on u.id = o.user_id order by 1, 2",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let old: chrono::DateTime<chrono::Utc> = "2026-12-01T00:00:00Z".parse().unwrap();
    let expected: Vec<(String, String, chrono::DateTime<chrono::Utc>)> = [
        ("busy@example.test", "schedule"),
        ("quiet@example.test", "export_completed_mine"),
        ("quiet@example.test", "export_failed"),
        ("quiet@example.test", "webhook"),
    ]
    .into_iter()
    .map(|(e, k)| (e.to_string(), k.to_string(), old))
    .collect();
    assert_eq!(outs, expected, "the old opt-out became both, with its time; nothing else changed");
    let ins: i64 = sqlx::query_scalar("select count(*) from mail_opt_ins").fetch_one(&pool).await.unwrap();
    assert_eq!(ins, 0, "nobody is switched on to completed scheduled exports");

    let id = |email: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>("select id from users where email = $1")
                .bind(email)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    let (quiet, busy) = (id("quiet@example.test").await, id("busy@example.test").await);
    assert_eq!(
        mail::wanted(&pool, quiet).await.unwrap(),
        [Kind::ScheduleFailures, Kind::PrivacyRequest, Kind::OrgClosed]
    );
    assert_eq!(
        mail::wanted(&pool, busy).await.unwrap(),
        [Kind::ExportFailed, Kind::ExportCompletedMine, Kind::WebhookFailing, Kind::PrivacyRequest, Kind::OrgClosed]
    );
    let mut tx = pool.begin().await.unwrap();
    for kind in [Kind::ExportFailed, Kind::ExportCompletedMine, Kind::ExportCompletedScheduled] {
        let message = mail::Message { kind, subject: "s".into(), text: "t".into() };
        assert!(!mail::enqueue(&mut tx, quiet, &message).await.unwrap(), "{kind:?} is off for quiet@");
    }
    tx.rollback().await.unwrap();
    let legacy: String = sqlx::query_scalar("select kind from mail_messages").fetch_one(&pool).await.unwrap();
    assert_eq!(legacy, "export", "a mail queued before keeps its kind");
    let refused = sqlx::query("insert into mail_opt_outs (user_id, kind) values ($1, 'export')")
        .bind(busy)
        .execute(&pool)
        .await
        .unwrap_err();
    assert!(data_export::db::is_violation_of(&refused, "mail_opt_outs_kind"), "{refused}");
    let refused = sqlx::query("insert into mail_opt_ins (user_id, kind) values ($1, 'export_failed')")
        .bind(busy)
        .execute(&pool)
        .await
        .unwrap_err();
    assert!(data_export::db::is_violation_of(&refused, "mail_opt_ins_kind"), "on by default: no opt-in");
    pool.close().await;
    let _ = sqlx::query(sqlx::AssertSqlSafe(format!("drop database {name}"))).execute(&admin).await;
}

/// Telling people is never a reason to lose a run's end: when the notifications
/// cannot be queued (here every insert into their tables is refused), the run is
/// still marked completed or failed, and nothing half-queued is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_that_cannot_be_queued_never_keep_a_run_from_ending() {
    let app = TestApp::spawn_with(Options { members: 20, workers: false, ..Default::default() }).await;
    let api = api(&app, &app.token("admin@acme.test").await);
    let r = api.post_json("/orgs/acme/webhooks", &serde_json::json!({ "url": "https://hooks.example.com/in" })).await;
    assert_eq!(r.status(), 201);
    for table in ["mail_messages", "webhook_deliveries"] {
        sqlx::query(sqlx::AssertSqlSafe(format!("alter table {table} add constraint broken check (false) not valid")))
            .execute(app.pool())
            .await
            .unwrap();
    }
    let created: serde_json::Value = api.post("/orgs/acme/exports").await.json().await.unwrap();
    let id = created["id"].as_str().unwrap().to_string();
    complete_run(&app, &id).await;
    assert_eq!(data_export::exports::runs::get_any(app.pool(), &id).await.unwrap().unwrap().status, "completed");
    let created: serde_json::Value = api.post("/orgs/acme/exports").await.json().await.unwrap();
    let failed = created["id"].as_str().unwrap().to_string();
    let failure = data_export::snapshot::job::Failure::plain("The export failed: a test said so.");
    assert!(
        data_export::exports::runs::fail(app.pool(), &app.state.config.public_url, &failed, None, &failure)
            .await
            .unwrap()
    );
    assert_eq!(data_export::exports::runs::get_any(app.pool(), &failed).await.unwrap().unwrap().status, "failed");
    let (mails, deliveries, jobs): (i64, i64, i64) = sqlx::query_as(
        "select (select count(*) from mail_messages), (select count(*) from webhook_deliveries),
                (select count(*) from apalis.jobs where job_type in ('mail', 'webhooks'))",
    )
    .fetch_one(app.pool())
    .await
    .unwrap();
    assert_eq!((mails, deliveries, jobs), (0, 0, 0), "nothing half-queued");
    assert_eq!(app.audits("export.completed").await.len(), 1);
}

/// The slot's claim, as a tick makes it.
async fn claim_slot(app: &TestApp, slot: chrono::DateTime<chrono::Utc>) {
    sqlx::query("insert into schedule_slots (kind, slot, job_id) values ('export', $1, $2)")
        .bind(slot)
        .bind(ulid::Ulid::generate().to_string())
        .execute(app.pool())
        .await
        .unwrap();
}

/// A run that fails before its slot has created the other orgs' runs sends no
/// premature mail; the one mail comes when the last run ends, listing it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_failing_before_its_slot_has_fired_sends_no_early_slot_mail() {
    let app = TestApp::spawn_with(Options { members: 20, workers: false, ..Default::default() }).await;
    let slot = chrono::Utc::now().date_naive().and_hms_opt(2, 0, 0).unwrap().and_utc();
    claim_slot(&app, slot).await;
    // The slot's job has made acme's run only, and that run fails at once.
    let acme = app.org_id("acme").await;
    data_export::exports::start::create_scheduled(app.pool(), acme, slot, 3).await.unwrap();
    let acme_run: String = sqlx::query_scalar("select id from export_runs where org_id = $1")
        .bind(acme)
        .fetch_one(app.pool())
        .await
        .unwrap();
    let failure = data_export::snapshot::job::Failure::plain("The export failed: early.");
    assert!(
        data_export::exports::runs::fail(app.pool(), &app.state.config.public_url, &acme_run, None, &failure)
            .await
            .unwrap()
    );
    assert!(queued(&app, "platform@example.test").await.is_empty(), "the slot has not fired all its runs yet");
    // The job goes on: globex's run is made, and the slot is fired.
    data_export::platform::scheduler::fire_slot(&app.state, slot).await.unwrap();
    assert!(queued(&app, "platform@example.test").await.is_empty(), "globex's run is pending");
    let globex_run: String = sqlx::query_scalar("select id from export_runs where org_id <> $1")
        .bind(acme)
        .fetch_one(app.pool())
        .await
        .unwrap();
    complete_run(&app, &globex_run).await;
    let digest = queued(&app, "platform@example.test").await;
    assert_eq!(digest.len(), 1);
    assert!(
        digest[0].2.contains("(acme): The export failed: early.") && digest[0].1.ends_with("1 of 2 failed"),
        "{digest:?}"
    );
    // Firing the slot again (a retried job) sends nothing more.
    data_export::platform::scheduler::fire_slot(&app.state, slot).await.unwrap();
    assert_eq!(queued(&app, "platform@example.test").await.len(), 1);
}

/// Issue 34's review: a mail to an org's admin is sent only if, when it goes out
/// (maybe hours after it was queued, while the mail server was down), the person is
/// still an active admin of that org; otherwise it is given up unsent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_mail_to_an_admin_who_left_since_is_given_up_unsent() {
    let mut app = TestApp::spawn_with(Options { workers: false, ..Default::default() }).await;
    let user = |email: &'static str| {
        let pool = app.pool().clone();
        async move {
            sqlx::query_scalar::<_, i64>("select id from users where email = $1")
                .bind(email)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    let (acme_admin, globex_admin) = (user("admin@acme.test").await, user("admin@globex.test").await);
    let (acme, globex) = (app.org_id("acme").await, app.org_id("globex").await);
    let message = |org: &str| mail::Message {
        kind: Kind::ExportFailed,
        subject: format!("Export of {org} failed"),
        text: "It failed.".into(),
    };
    let mut tx = app.pool().begin().await.unwrap();
    assert!(mail::enqueue_to_admin(&mut tx, acme_admin, acme, &message("acme")).await.unwrap());
    assert!(mail::enqueue_to_admin(&mut tx, globex_admin, globex, &message("globex")).await.unwrap());
    tx.commit().await.unwrap();
    // Before it goes out, acme's admin is demoted.
    sqlx::query("update memberships set role = 'member' where user_id = $1 and org_id = $2")
        .bind(acme_admin)
        .bind(acme)
        .execute(app.pool())
        .await
        .unwrap();
    app.start_workers();
    let outcome = |who: i64| {
        let pool = app.pool().clone();
        async move {
            sqlx::query_as::<_, (bool, bool, Option<String>)>(
                "select sent_at is not null, failed_at is not null, last_error from mail_messages where user_id = $1",
            )
            .bind(who)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (a, g) = (outcome(acme_admin).await, outcome(globex_admin).await);
        if (a.0 || a.1) && (g.0 || g.1) {
            assert_eq!((a.0, a.1), (false, true), "acme's former admin gets nothing: {a:?}");
            assert!(a.2.as_deref().is_some_and(|e| e.contains("no longer a recipient")), "{a:?}");
            assert_eq!((g.0, g.1), (true, false), "globex's admin still gets theirs: {g:?}");
            break;
        }
        assert!(Instant::now() < deadline, "the mails were not dealt with: {a:?} {g:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
