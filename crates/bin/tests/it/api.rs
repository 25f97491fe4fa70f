//! Plain HTTP to the server, for what the CLI refuses before sending and for simulated
//! workstations that speak the device API without an agent process.

use upkeep_test_support::ADMIN_PASSWORD;

use crate::harness::World;

pub struct Api {
    pub base: String,
    pub token: String,
    http: reqwest::Client,
    runtime: tokio::runtime::Runtime,
}

impl Api {
    /// Signs in as `admin`.
    pub fn login(world: &World) -> Api {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let mut api = Api {
            base: world.server.url.clone(),
            token: String::new(),
            http: reqwest::Client::new(),
            runtime,
        };
        let (status, body) = api.post(
            "/api/v1/auth/login",
            None,
            &serde_json::json!({ "user": "admin", "password": ADMIN_PASSWORD }),
        );
        assert_eq!(status, 200, "{body}");
        api.token = body["token"].as_str().expect("token").to_owned();
        api
    }

    pub fn block_on<F: std::future::Future>(&self, future: F) -> F::Output {
        self.runtime.block_on(future)
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// POSTs JSON with `token` (the admin's when `None`); returns (status, body or null).
    pub fn post(&self, path: &str, token: Option<&str>, body: &serde_json::Value) -> (u16, serde_json::Value) {
        self.runtime
            .block_on(post(&self.http, &self.base, token.unwrap_or(&self.token), path, body))
    }

    pub fn post_raw(&self, path: &str, body: &str) -> (u16, serde_json::Value) {
        self.runtime.block_on(async {
            let response = self
                .http
                .post(format!("{}{path}", self.base))
                .bearer_auth(&self.token)
                .header("content-type", "application/json")
                .body(body.to_owned())
                .send()
                .await
                .expect("post");
            let status = response.status().as_u16();
            (status, response.json().await.unwrap_or(serde_json::Value::Null))
        })
    }

    /// Uploads with raw multipart parts; returns (status, body).
    pub fn upload(
        &self,
        product: &str,
        metadata: serde_json::Value,
        filename: &str,
        bytes: Vec<u8>,
    ) -> (u16, serde_json::Value) {
        self.runtime.block_on(async {
            let form = reqwest::multipart::Form::new()
                .text("metadata", metadata.to_string())
                .part(
                    "artifact",
                    reqwest::multipart::Part::bytes(bytes).file_name(filename.to_owned()),
                );
            let response = self
                .http
                .post(format!("{}/api/v1/products/{product}/releases", self.base))
                .bearer_auth(&self.token)
                .multipart(form)
                .send()
                .await
                .expect("upload");
            let status = response.status().as_u16();
            (status, response.json().await.unwrap_or(serde_json::Value::Null))
        })
    }

    /// An enrollment token for `uses` workstations.
    pub fn enroll_token(&self, uses: u32) -> String {
        let (status, body) = self.post("/api/v1/enroll-tokens", None, &serde_json::json!({ "uses": uses }));
        assert_eq!(status, 201, "{body}");
        body["token"].as_str().expect("token").to_owned()
    }
}

pub async fn post(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    path: &str,
    body: &serde_json::Value,
) -> (u16, serde_json::Value) {
    let response = http
        .post(format!("{base}{path}"))
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .expect("post");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(serde_json::Value::Null))
}

/// A workstation that speaks the device API directly.
#[derive(Debug, Clone)]
pub struct Device {
    pub id: String,
    pub token: String,
}

impl Device {
    pub async fn enroll(
        http: &reqwest::Client,
        base: &str,
        enroll_token: &str,
        hostname: &str,
        groups: &[&str],
    ) -> Device {
        let body = serde_json::json!({
            "token": enroll_token, "hostname": hostname, "os": "linux", "arch": "x86_64",
            "agent_version": "0.1.0", "groups": groups,
        });
        let (status, answer) = post(http, base, "", "/api/v1/device/enroll", &body).await;
        assert_eq!(status, 201, "{answer}");
        Device {
            id: answer["workstation_id"].as_str().expect("id").to_owned(),
            token: answer["device_token"].as_str().expect("device token").to_owned(),
        }
    }

    /// Checks in with `installed` (product, version) and returns the instructions.
    pub fn checkin(&self, api: &Api, installed: &[(&str, &str)]) -> Vec<serde_json::Value> {
        let installed: Vec<serde_json::Value> = installed
            .iter()
            .map(|(p, v)| serde_json::json!({ "product": p, "version": v }))
            .collect();
        let body = serde_json::json!({
            "hostname": self.id, "os": "linux", "arch": "x86_64", "agent_version": "0.1.0", "installed": installed,
        });
        let (status, answer) = api.post("/api/v1/device/checkin", Some(&self.token), &body);
        assert_eq!(status, 200, "{answer}");
        answer["instructions"].as_array().cloned().unwrap_or_default()
    }

    /// Reports a status for a rollout.
    pub fn report(&self, api: &Api, rollout: i64, version: &str, status: &str) {
        let body =
            serde_json::json!({ "product": "demo", "version": version, "status": status, "rollout_id": rollout });
        let (code, answer) = api.post("/api/v1/device/reports", Some(&self.token), &body);
        assert_eq!(code, 204, "{answer}");
    }
}
