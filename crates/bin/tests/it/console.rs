//! The web console's guard: roles on every route of the route table (API and forms), CSRF on
//! every state-changing form, sign-in and sign-out; plus the browser walkthrough in Chromium.

use std::collections::BTreeMap;

use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, COOKIE, LOCATION, SET_COOKIE};
use upkeep_server::auth::Role;
use upkeep_server::routes::{Access, RouteInfo, Surface};
use upkeep_test_support::ADMIN_PASSWORD;

use crate::harness::{World, assert_success};

const PASSWORD: &str = "a long enough password";

/// A browser-like client: keeps no cookies itself, follows no redirects, so each step is seen.
struct Browser {
    base: String,
    http: reqwest::Client,
    runtime: tokio::runtime::Runtime,
}

/// A signed-in console session.
struct Session {
    cookie: String,
    csrf: String,
}

impl Browser {
    fn new(world: &World) -> Browser {
        let _ = rustls::crypto::ring::default_provider().install_default();
        Browser {
            base: world.server.url.clone(),
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("client"),
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime"),
        }
    }

    fn send(&self, request: reqwest::RequestBuilder) -> (StatusCode, reqwest::header::HeaderMap, String) {
        self.runtime.block_on(async {
            let response = request.send().await.expect("request");
            let status = response.status();
            let headers = response.headers().clone();
            (status, headers, response.text().await.expect("body"))
        })
    }

    fn get(&self, path: &str, session: Option<&Session>) -> (StatusCode, reqwest::header::HeaderMap, String) {
        let mut request = self.http.get(format!("{}{path}", self.base));
        if let Some(s) = session {
            request = request.header(COOKIE, &s.cookie);
        }
        self.send(request)
    }

    /// POSTs a URL-encoded form.
    fn post_form(&self, path: &str, session: Option<&Session>, fields: &[(&str, &str)]) -> (StatusCode, String) {
        let body = url_encode(fields);
        let mut request = self
            .http
            .post(format!("{}{path}", self.base))
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(body);
        if let Some(s) = session {
            request = request.header(COOKIE, &s.cookie);
        }
        let (status, _, body) = self.send(request);
        (status, body)
    }

    /// POSTs a URL-encoded form that must succeed with a redirect (303); returns where it leads.
    fn submit(&self, path: &str, session: &Session, fields: &[(&str, &str)]) -> String {
        let mut all = vec![("csrf", session.csrf.as_str())];
        all.extend_from_slice(fields);
        let request = self
            .http
            .post(format!("{}{path}", self.base))
            .header(COOKIE, &session.cookie)
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(url_encode(&all));
        let (status, headers, body) = self.send(request);
        assert_eq!(status, StatusCode::SEE_OTHER, "{path}: {body}");
        headers
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    }

    /// Signs in through the sign-in form, as a person would.
    fn sign_in(&self, user: &str, password: &str) -> Session {
        self.sign_in_via(user, password, false).0
    }

    /// Signs in; with `https`, every request says it came through a TLS proxy
    /// (`X-Forwarded-Proto: https`). Returns the session and its `Set-Cookie` header.
    fn sign_in_via(&self, user: &str, password: &str, https: bool) -> (Session, String) {
        let proxied = |request: reqwest::RequestBuilder| {
            if https {
                request.header("x-forwarded-proto", "https")
            } else {
                request
            }
        };
        let (status, headers, page) = self.send(proxied(self.http.get(format!("{}/login", self.base))));
        assert_eq!(status, StatusCode::OK, "{page}");
        let login_cookie = cookie_pair(&headers, "upkeep_login").expect("sign-in cookie");
        let token = hidden_field(&page, "csrf").expect("sign-in form token");
        let request = proxied(self.http.post(format!("{}/login", self.base)))
            .header(COOKIE, &login_cookie)
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(url_encode(&[
                ("user", user),
                ("password", password),
                ("csrf", &token),
                ("next", "/"),
            ]));
        let (status, headers, body) = self.send(request);
        assert_eq!(status, StatusCode::SEE_OTHER, "sign-in as {user}: {body}");
        let set_cookie: Vec<&str> = headers
            .get_all(SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .filter(|v| v.starts_with("upkeep_session="))
            .collect();
        assert_eq!(set_cookie.len(), 1, "{headers:?}");
        let attributes = set_cookie[0].to_ascii_lowercase();
        assert!(attributes.contains("httponly"), "{attributes}");
        assert!(attributes.contains("samesite=strict"), "{attributes}");
        let cookie = cookie_pair(&headers, "upkeep_session").expect("session cookie");
        let (status, _, page) = self.get(
            "/account",
            Some(&Session {
                cookie: cookie.clone(),
                csrf: String::new(),
            }),
        );
        assert_eq!(status, StatusCode::OK, "{page}");
        let csrf = hidden_field(&page, "csrf").expect("session CSRF token in the page");
        (Session { cookie, csrf }, set_cookie[0].to_owned())
    }
}

fn url_encode(fields: &[(&str, &str)]) -> String {
    fields
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

fn enc(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `name=value` of a Set-Cookie header.
fn cookie_pair(headers: &reqwest::header::HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .and_then(|v| v.split(';').next())
        .map(str::to_owned)
}

fn hidden_field(page: &str, name: &str) -> Option<String> {
    let marker = format!(r#"name="{name}" value=""#);
    let start = page.find(&marker)? + marker.len();
    let end = page[start..].find('"')?;
    Some(page[start..start + end].to_owned())
}

/// A concrete path for a route pattern: every `{param}` gets a plausible value.
fn concrete(route: &RouteInfo) -> String {
    let values: BTreeMap<&str, &str> = [
        ("product", "demo"),
        ("version", "1.0.0"),
        ("id", "1"),
        ("action", "pause"),
        ("decision", "approve"),
        (
            "sha256",
            "0000000000000000000000000000000000000000000000000000000000000000",
        ),
        ("filename", "x.tar.gz"),
        ("organization", "default"),
        ("file", "timestamp.json"),
    ]
    .into_iter()
    .collect();
    let mut path = route.path.clone();
    for (name, value) in &values {
        path = path.replace(&format!("{{{name}}}"), value);
    }
    assert!(!path.contains('{'), "no value for a parameter of {}", route.path);
    path
}

fn create_user(world: &World, name: &str, role: &str) {
    let out = world.upkeep_stdin(&["user", "create", name, "--role", role, "--password-stdin"], PASSWORD);
    assert_success(&out, "upkeep user create");
}

fn api_token(browser: &Browser, user: &str) -> String {
    let (status, _, body) = browser.send(
        browser
            .http
            .post(format!("{}/api/v1/auth/login", browser.base))
            .json(&serde_json::json!({ "user": user, "password": PASSWORD })),
    );
    assert_eq!(status, StatusCode::OK, "{body}");
    let value: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    value["token"].as_str().expect("token").to_owned()
}

/// Sends `route` as the holder of `token` (API) or `session` (console) and returns the status
/// and body. Console requests carry a valid CSRF token, so only the role can refuse them.
fn call(browser: &Browser, route: &RouteInfo, token: &str, session: &Session) -> (StatusCode, String) {
    let url = format!("{}{}", browser.base, concrete(route));
    let mut request = browser.http.request(route.method.clone(), &url);
    request = match route.surface {
        Surface::Api => request.bearer_auth(token),
        Surface::Console => request.header(COOKIE, &session.cookie),
    };
    if route.changes_state() {
        request = match route.surface {
            Surface::Api => request.header(CONTENT_TYPE, "application/json").body("{}"),
            Surface::Console => request
                .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(url_encode(&[("csrf", &session.csrf)])),
        };
    }
    let (status, _, body) = browser.send(request);
    (status, body)
}

/// Every route that changes state without needing a role: sign-in, enrollment, the agents'
/// check-ins and reports, and a signed-in user's own session and password. Opening another one
/// is a decision to make here, not a side effect of its label.
const OPEN_STATE_CHANGING: &[(&str, &str, Access)] = &[
    ("POST", "/api/v1/device/enroll", Access::Public),
    ("POST", "/api/v1/device/checkin", Access::Device),
    ("POST", "/api/v1/device/reports", Access::Device),
    ("POST", "/api/v1/auth/login", Access::Public),
    ("POST", "/api/v1/auth/password", Access::SelfService),
    ("POST", "/login", Access::Public),
    ("POST", "/logout", Access::SelfService),
    ("POST", "/account/password", Access::SelfService),
];

/// The state-changing routes open as `Public`, `Device` or `SelfService` are exactly
/// [`OPEN_STATE_CHANGING`].
fn open_routes_that_change_state_are_known(table: &[RouteInfo]) {
    let open: Vec<(String, String, Access)> = table
        .iter()
        .filter(|r| r.changes_state() && !matches!(r.access, Access::Role(_)))
        .map(|r| (r.method.to_string(), r.path.clone(), r.access))
        .collect();
    for (method, path, access) in &open {
        assert!(
            OPEN_STATE_CHANGING
                .iter()
                .any(|(m, p, a)| m == method && p == path && a == access),
            "{method} {path} changes state and is registered as {access:?}: give it a role, or add it \
             to OPEN_STATE_CHANGING if it really is open to anyone of that kind"
        );
    }
    for (method, path, access) in OPEN_STATE_CHANGING {
        assert!(
            open.iter().any(|(m, p, a)| m == method && p == path && a == access),
            "{method} {path} ({access:?}) is no longer an open state-changing route: update OPEN_STATE_CHANGING"
        );
    }
}

/// A viewer is refused every route that needs more, and a release manager every route that
/// needs an admin: walked over the server's own route table, API and console alike.
fn roles_hold_on_every_route(world: &World) {
    create_user(world, "vera", "viewer");
    create_user(world, "rick", "release_manager");
    let users = world.upkeep_json(&["user", "list", "--json"]);
    let roles: BTreeMap<String, String> = users
        .as_array()
        .expect("list")
        .iter()
        .map(|u| {
            (
                u["name"].as_str().unwrap_or("").to_owned(),
                u["role"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    assert_eq!(roles.get("vera").map(String::as_str), Some("viewer"));
    assert_eq!(roles.get("rick").map(String::as_str), Some("release_manager"));

    let browser = Browser::new(world);
    let table = upkeep_server::routes::table();
    assert!(table.len() > 40, "the route table lists {} routes", table.len());
    open_routes_that_change_state_are_known(&table);
    for (user, role) in [("vera", Role::Viewer), ("rick", Role::ReleaseManager)] {
        let token = api_token(&browser, user);
        let session = browser.sign_in(user, PASSWORD);
        let mut refused = 0;
        for route in &table {
            // Nothing that changes state is open to a plain viewer.
            if route.changes_state()
                && let Access::Role(r) = route.access
            {
                assert!(
                    r > Role::Viewer,
                    "{} {} changes state but is open to viewers",
                    route.method,
                    route.path
                );
            }
            let Access::Role(needed) = route.access else { continue };
            if role >= needed {
                continue;
            }
            let (status, body) = call(&browser, route, &token, &session);
            assert_eq!(
                status,
                StatusCode::FORBIDDEN,
                "{user} ({role:?}) got {status} from {} {}: {body}",
                route.method,
                route.path
            );
            assert!(body.contains("forbidden"), "{} {}: {body}", route.method, route.path);
            refused += 1;
        }
        assert!(refused > 5, "{user} was refused only {refused} routes");
    }

    // Nothing the viewer tried happened; and what a viewer may read, it can.
    let products = world.upkeep_json(&["product", "list", "--json"]);
    assert_eq!(products.as_array().map(Vec::len), Some(0), "{products}");
    let session = browser.sign_in("vera", PASSWORD);
    for route in table.iter().filter(|r| {
        r.surface == Surface::Console
            && !r.changes_state()
            && r.access == Access::Role(Role::Viewer)
            && !r.path.contains('{')
    }) {
        let (status, _, body) = browser.get(&route.path, Some(&session));
        assert_eq!(status, StatusCode::OK, "viewer reading {}: {body}", route.path);
    }
}
crate::on_each_backend!(roles_hold_on_every_route);

/// Every state-changing console route refuses a request without the session's CSRF token, or
/// with another one; with it, the same form works.
fn forms_need_the_csrf_token(world: &World) {
    let browser = Browser::new(world);
    let session = browser.sign_in("admin", ADMIN_PASSWORD);
    let stale = Session {
        cookie: session.cookie.clone(),
        csrf: "0".repeat(session.csrf.len()),
    };
    let mut checked = 0;
    for route in upkeep_server::routes::table()
        .iter()
        .filter(|r| r.surface == Surface::Console && r.changes_state())
        .filter(|r| matches!(r.access, Access::Role(_) | Access::SelfService))
    {
        let path = concrete(route);
        let (status, body) = browser.post_form(&path, Some(&session), &[("name", "sneaky"), ("kind", "client")]);
        assert_eq!(status, StatusCode::FORBIDDEN, "{path} without a token: {body}");
        assert!(body.contains("csrf_failed"), "{path}: {body}");
        let (status, body) = browser.post_form(
            &path,
            Some(&stale),
            &[("csrf", &stale.csrf), ("name", "sneaky"), ("kind", "client")],
        );
        assert_eq!(status, StatusCode::FORBIDDEN, "{path} with a wrong token: {body}");
        checked += 1;
    }
    assert!(checked >= 10, "only {checked} forms checked");
    assert_eq!(
        world
            .upkeep_json(&["product", "list", "--json"])
            .as_array()
            .map(Vec::len),
        Some(0),
        "a refused form created something"
    );

    // The same form with the right token does its job.
    let (status, body) = browser.post_form(
        "/products",
        Some(&session),
        &[
            ("csrf", &session.csrf),
            ("name", "editor"),
            ("kind", "client"),
            ("public", "1"),
        ],
    );
    assert_eq!(status, StatusCode::SEE_OTHER, "{body}");
    let products = world.upkeep_json(&["product", "list", "--json"]);
    assert_eq!(products[0]["name"], "editor", "{products}");
    assert_eq!(products[0]["public"], true, "{products}");

    // A sign-in form without its cookie is refused; signing out ends the session.
    let (status, body) = browser.post_form(
        "/login",
        None,
        &[("user", "admin"), ("password", ADMIN_PASSWORD), ("csrf", "forged")],
    );
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, _) = browser.post_form("/logout", Some(&session), &[("csrf", &session.csrf)]);
    assert_eq!(status, StatusCode::SEE_OTHER);
    let (status, headers, _) = browser.get("/products", Some(&session));
    assert_eq!(status, StatusCode::SEE_OTHER, "a signed-out session still reads pages");
    let location = headers.get(LOCATION).and_then(|v| v.to_str().ok()).unwrap_or("");
    assert!(location.starts_with("/login?next="), "{location}");
}
crate::on_each_backend!(forms_need_the_csrf_token);

/// Changing one's password signs out other sessions and API tokens, and the old password stops
/// working.
fn password_change_signs_out_elsewhere(world: &World) {
    create_user(world, "paula", "viewer");
    let browser = Browser::new(world);
    let token = api_token(&browser, "paula");
    let other = browser.sign_in("paula", PASSWORD);
    let session = browser.sign_in("paula", PASSWORD);
    let (status, body) = browser.post_form(
        "/account/password",
        Some(&session),
        &[
            ("csrf", &session.csrf),
            ("current", PASSWORD),
            ("new", "short"),
            ("confirm", "short"),
        ],
    );
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let new = "an even longer password";
    let (status, body) = browser.post_form(
        "/account/password",
        Some(&session),
        &[
            ("csrf", &session.csrf),
            ("current", PASSWORD),
            ("new", new),
            ("confirm", new),
        ],
    );
    assert_eq!(status, StatusCode::SEE_OTHER, "{body}");
    let (status, _, _) = browser.get("/account", Some(&session));
    assert_eq!(status, StatusCode::OK, "the session that changed it stays signed in");
    let (status, _, _) = browser.get("/account", Some(&other));
    assert_eq!(status, StatusCode::SEE_OTHER, "another session survived the change");
    let (status, _, body) = browser.send(
        browser
            .http
            .get(format!("{}/api/v1/products", browser.base))
            .bearer_auth(&token),
    );
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "an API token survived the change: {body}"
    );
    browser.sign_in("paula", new);
}
crate::on_each_backend!(password_change_signs_out_elsewhere);

/// `/downloads` offers only approved releases of public client products, and its links resume
/// like the agents' downloads (HTTP Range).
fn public_downloads_resume(world: &World) {
    world.upkeep_ok(&["product", "create", "editor", "--public"]);
    world.upkeep_ok(&["product", "create", "internal"]);
    let bytes = upkeep_test_support::demo_archive("1.0.0", 4096);
    let sha256 = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&bytes))
    };
    world.publish("editor", "1.0.0", &bytes);
    world.publish("internal", "1.0.0", &upkeep_test_support::demo_archive("1.0.0", 10));
    let browser = Browser::new(world);
    let path = format!("/downloads/{sha256}/editor-1.0.0.tar.gz");

    let (_, _, page) = browser.get("/downloads", None);
    assert!(
        page.contains("Nothing is offered for download yet"),
        "pending releases are offered: {page}"
    );
    let (status, _, _) = browser.get(&path, None);
    assert_eq!(status, StatusCode::NOT_FOUND, "a pending release can be downloaded");

    world.upkeep_ok(&["release", "approve", "editor", "1.0.0"]);
    world.upkeep_ok(&["release", "approve", "internal", "1.0.0"]);
    let (status, _, page) = browser.get("/downloads", None);
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains(&sha256), "{page}");
    assert!(page.contains(&format!("href=\"{path}\"")), "{page}");
    assert!(
        !page.contains("internal"),
        "a product not marked public is offered: {page}"
    );

    let whole = browser.runtime.block_on(async {
        let response = browser
            .http
            .get(format!("{}{path}", browser.base))
            .send()
            .await
            .expect("get");
        assert_eq!(response.status(), StatusCode::OK);
        let disposition = response.headers()["content-disposition"]
            .to_str()
            .unwrap_or("")
            .to_owned();
        assert_eq!(disposition, "attachment; filename=\"editor-1.0.0.tar.gz\"");
        response.bytes().await.expect("body")
    });
    assert_eq!(whole.as_ref(), bytes.as_slice());
    let tail = browser.runtime.block_on(async {
        let response = browser
            .http
            .get(format!("{}{path}", browser.base))
            .header("range", "bytes=1000-")
            .send()
            .await
            .expect("get");
        assert_eq!(response.status(), StatusCode::PARTIAL_CONTENT);
        let range = response.headers()["content-range"].to_str().unwrap_or("").to_owned();
        assert_eq!(range, format!("bytes 1000-{}/{}", bytes.len() - 1, bytes.len()));
        response.bytes().await.expect("body")
    });
    assert_eq!(tail.as_ref(), &bytes[1000..], "the resumed part differs");

    world.upkeep_ok(&["product", "update", "editor", "--public", "false"]);
    let (status, _, _) = browser.get(&path, None);
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "a product taken off the page can still be downloaded"
    );
}
crate::on_each_backend!(public_downloads_resume);

/// The upload form is multipart and carries its token in `?csrf=`: without it, or with another
/// one, the upload is refused and nothing is recorded; with it, the same upload works.
fn uploads_need_the_csrf_token(world: &World) {
    world.upkeep_ok(&["product", "create", "editor"]);
    let browser = Browser::new(world);
    let session = browser.sign_in("admin", ADMIN_PASSWORD);
    let archive = upkeep_test_support::demo_archive("1.0.0", 1024);
    let upload = |query: &str| {
        let form = reqwest::multipart::Form::new()
            .text("version", "1.0.0")
            .text("platform", "linux-x86_64")
            .text("launch", "bin/demo")
            .part(
                "artifact",
                reqwest::multipart::Part::bytes(archive.clone()).file_name("editor-1.0.0.tar.gz"),
            );
        browser.send(
            browser
                .http
                .post(format!("{}/products/editor/releases{query}", browser.base))
                .header(COOKIE, &session.cookie)
                .multipart(form),
        )
    };
    let releases = || world.upkeep_json(&["release", "list", "editor", "--json"]);
    let wrong = format!("?csrf={}", "0".repeat(session.csrf.len()));
    for query in ["", wrong.as_str()] {
        let (status, _, body) = upload(query);
        assert_eq!(status, StatusCode::FORBIDDEN, "upload with {query:?}: {body}");
        assert!(body.contains("csrf_failed"), "{body}");
        assert_eq!(
            releases().as_array().map(Vec::len),
            Some(0),
            "a refused upload ({query:?}) recorded a release"
        );
    }
    let (status, headers, body) = upload(&format!("?csrf={}", session.csrf));
    assert_eq!(status, StatusCode::SEE_OTHER, "{body}");
    assert_eq!(
        headers.get(LOCATION).and_then(|v| v.to_str().ok()),
        Some("/products/editor/releases/1.0.0")
    );
    assert_eq!(releases()[0]["version"], "1.0.0");
}
crate::on_each_backend!(uploads_need_the_csrf_token);

/// The session cookie is `Secure` when the sign-in came over TLS (as a proxy says with
/// `X-Forwarded-Proto: https`), and not over plain HTTP, where a browser would drop it.
fn session_cookie_is_secure_behind_tls(world: &World) {
    let browser = Browser::new(world);
    let (_, over_tls) = browser.sign_in_via("admin", ADMIN_PASSWORD, true);
    let (_, plain) = browser.sign_in_via("admin", ADMIN_PASSWORD, false);
    let secure = |set_cookie: &str| {
        set_cookie
            .split(';')
            .any(|attribute| attribute.trim().eq_ignore_ascii_case("secure"))
    };
    assert!(secure(&over_tls), "{over_tls}");
    assert!(!secure(&plain), "{plain}");
}
crate::on_each_backend!(session_cookie_is_secure_behind_tls);

/// A rollout's state as the API reports it.
fn rollout_state(world: &World, id: &str) -> (String, Option<String>) {
    let report = world.upkeep_json(&["rollout", "status", id, "--json"]);
    let rollout = &report["rollout"];
    (
        rollout["state"].as_str().unwrap_or("").to_owned(),
        rollout["state_reason"].as_str().map(str::to_owned),
    )
}

/// Pause, resume and cancel from the rollout's page change the rollout the API reports.
fn rollout_actions_from_the_console(world: &World) {
    world.upkeep_ok(&["product", "create", "demo"]);
    world.publish("demo", "1.0.0", &upkeep_test_support::demo_archive("1.0.0", 0));
    world.upkeep_ok(&["release", "approve", "demo", "1.0.0"]);
    // A workstation that has not installed it yet keeps the rollout active.
    world.enroll_agent("desk", &world.server.url);
    world.upkeep_ok(&["rollout", "create", "demo", "1.0.0", "--all"]);
    let id = world.upkeep_json(&["rollout", "list", "--json"])[0]["id"].to_string();
    assert_eq!(rollout_state(world, &id).0, "active");

    let browser = Browser::new(world);
    let session = browser.sign_in("admin", ADMIN_PASSWORD);
    let report = format!("/rollouts/{id}");
    for (action, reason, state) in [
        ("pause", "waiting for QA", "paused"),
        ("resume", "", "active"),
        ("cancel", "superseded by 1.0.1", "cancelled"),
    ] {
        let (_, _, page) = browser.get(&report, Some(&session));
        assert!(
            page.contains(&format!(r#"action="{report}/{action}""#)),
            "no {action} form on the {} rollout's page",
            rollout_state(world, &id).0
        );
        let location = browser.submit(&format!("{report}/{action}"), &session, &[("reason", reason)]);
        assert_eq!(location, report);
        let (now, why) = rollout_state(world, &id);
        assert_eq!(now, state, "after {action}");
        if !reason.is_empty() {
            assert_eq!(why.as_deref(), Some(reason), "after {action}");
        }
    }
    let (_, _, page) = browser.get(&report, Some(&session));
    assert!(
        !page.contains(&format!(r#"action="{report}/"#)),
        "a cancelled rollout still offers actions"
    );
}
crate::on_each_backend!(rollout_actions_from_the_console);

/// A notification group created through the form is listed, on the page and by the API.
fn notification_group_from_the_console(world: &World) {
    world.upkeep_ok(&["product", "create", "demo"]);
    let browser = Browser::new(world);
    let session = browser.sign_in("admin", ADMIN_PASSWORD);
    let (status, page) = browser.post_form(
        "/notification-groups",
        Some(&session),
        &[
            ("csrf", &session.csrf),
            ("name", "desktop-team"),
            ("emails", "ops@example.com,\nlead@example.com"),
            ("webhooks", ""),
            ("product", "demo"),
            ("rollout", ""),
        ],
    );
    assert_eq!(status, StatusCode::OK, "{page}");
    assert!(page.contains("Group <strong>desktop-team</strong> created."), "{page}");
    let (_, _, page) = browser.get("/notification-groups", Some(&session));
    assert!(page.contains("<td>desktop-team</td>"), "{page}");
    assert!(page.contains("ops@example.com, lead@example.com"), "{page}");
    assert!(page.contains("product demo"), "{page}");
    let groups = world.upkeep_json(&["notify", "group", "list", "--json"]);
    assert_eq!(groups[0]["name"], "desktop-team", "{groups}");
    assert_eq!(groups[0]["product"], "demo", "{groups}");
}
crate::on_each_backend!(notification_group_from_the_console);

/// A user added on the Users page can sign in, with the role the form gave them.
fn user_added_in_the_console_signs_in(world: &World) {
    let browser = Browser::new(world);
    let session = browser.sign_in("admin", ADMIN_PASSWORD);
    let location = browser.submit(
        "/users",
        &session,
        &[("name", "nadia"), ("role", "release_manager"), ("password", PASSWORD)],
    );
    assert_eq!(location, "/users");
    let (_, _, page) = browser.get("/users", Some(&session));
    assert!(page.contains("<td>nadia</td><td>release_manager</td>"), "{page}");
    let nadia = browser.sign_in("nadia", PASSWORD);
    let (status, _, page) = browser.get("/account", Some(&nadia));
    assert_eq!(status, StatusCode::OK);
    assert!(
        page.contains("Signed in as <strong>nadia</strong> with role <strong>release_manager</strong>"),
        "{page}"
    );
}
crate::on_each_backend!(user_added_in_the_console_signs_in);

/// Enrolls an agent `name` in `group`; returns its workstation id.
fn enroll_in_group(world: &World, name: &str, group: &str) -> String {
    let token = world.upkeep_ok(&["enroll-token", "create"]).trim().to_owned();
    let state = world.agent_state(name);
    world.agent_ok(
        &state,
        &[
            "enroll",
            "--server",
            &world.server.url,
            "--token",
            &token,
            "--group",
            group,
        ],
    );
    world.workstation_id(&state)
}

/// The workstation search shows the workstations that match and no other.
fn workstation_search_finds_the_match(world: &World) {
    let lab = enroll_in_group(world, "lab-pc", "lab");
    let office = enroll_in_group(world, "office-pc", "office");
    let browser = Browser::new(world);
    let session = browser.sign_in("admin", ADMIN_PASSWORD);
    let link = |id: &str| format!(r#"href="/workstations/{id}""#);
    for (query, found, other) in [("lab", &lab, &office), (office.as_str(), &office, &lab)] {
        let (status, _, page) = browser.get(&format!("/workstations?q={}", enc(query)), Some(&session));
        assert_eq!(status, StatusCode::OK, "{page}");
        assert!(page.contains("1 of 2 workstations"), "search {query:?}: {page}");
        assert!(page.contains(&link(found)), "search {query:?} misses {found}: {page}");
        assert!(!page.contains(&link(other)), "search {query:?} shows {other}: {page}");
    }
    let (_, _, page) = browser.get("/workstations?q=nowhere", Some(&session));
    assert!(page.contains("0 of 2 workstations"), "{page}");
}
crate::on_each_backend!(workstation_search_finds_the_match);

/// "Install" on the server-components page starts a mandatory rollout of the newest approved
/// version to the hosts that run an older one.
fn component_install_from_the_console(world: &World) {
    world.upkeep_ok(&["product", "create", "crm-server", "--kind", "server"]);
    world.publish("crm-server", "1.0.0", &upkeep_test_support::demo_archive("1.0.0", 0));
    world.upkeep_ok(&["release", "approve", "crm-server", "1.0.0"]);
    world.upkeep_ok(&["rollout", "create", "crm-server", "1.0.0", "--all"]);
    let agent = world.enroll_agent("crm-host", &world.server.url);
    world.agent_ok(&agent, &["update"]);
    let host = world.workstation_id(&agent);
    world.publish("crm-server", "1.1.0", &upkeep_test_support::demo_archive("1.1.0", 0));
    world.upkeep_ok(&["release", "approve", "crm-server", "1.1.0"]);

    let browser = Browser::new(world);
    let session = browser.sign_in("admin", ADMIN_PASSWORD);
    let (_, _, page) = browser.get("/components", Some(&session));
    assert!(page.contains("Install 1.1.0"), "{page}");
    let location = browser.submit("/components/crm-server/install", &session, &[("version", "1.1.0")]);
    let id = location
        .strip_prefix("/rollouts/")
        .unwrap_or_else(|| panic!("led to {location}"));
    let report = world.upkeep_json(&["rollout", "status", id, "--json"]);
    let rollout = &report["rollout"];
    assert_eq!(rollout["product"], "crm-server", "{report}");
    assert_eq!(rollout["version"], "1.1.0", "{report}");
    assert_eq!(rollout["mandatory"], true, "{report}");
    assert_eq!(rollout["state"], "active", "{report}");
    let targeted: Vec<&str> = report["workstations"]
        .as_array()
        .map(|w| w.iter().filter_map(|w| w["workstation_id"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(targeted, [host.as_str()], "{report}");
}
crate::on_each_backend!(component_install_from_the_console);
