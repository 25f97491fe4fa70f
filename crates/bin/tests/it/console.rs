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

    /// Signs in through the sign-in form, as a person would.
    fn sign_in(&self, user: &str, password: &str) -> Session {
        let (status, headers, page) = self.get("/login", None);
        assert_eq!(status, StatusCode::OK, "{page}");
        let login_cookie = cookie_pair(&headers, "upkeep_login").expect("sign-in cookie");
        let token = hidden_field(&page, "csrf").expect("sign-in form token");
        let request = self
            .http
            .post(format!("{}/login", self.base))
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
        Session { cookie, csrf }
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
    for (user, role) in [("vera", Role::Viewer), ("rick", Role::ReleaseManager)] {
        let token = api_token(&browser, user);
        let session = browser.sign_in(user, PASSWORD);
        let mut refused = 0;
        for route in &table {
            // Nothing that changes state is open to a plain viewer.
            if route.changes_state() {
                assert!(
                    matches!(route.access, Access::Public | Access::Device | Access::SelfService)
                        || matches!(route.access, Access::Role(r) if r > Role::Viewer),
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
