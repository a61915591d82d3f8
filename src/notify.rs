//! Outgoing notifications: a JSON POST to a webhook (http or https, system root certificates).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// POSTs `body` as JSON to `url`; returns the HTTP status.
pub async fn post_json(url: &str, body: &serde_json::Value) -> Result<u16, String> {
    post(url, "application/json", Bytes::from(body.to_string()))
        .await
        .map(|(status, _)| status)
}

/// POSTs `body` with `content_type` to `url`; returns the HTTP status and the response body.
pub async fn post(url: &str, content_type: &str, body: Bytes) -> Result<(u16, Bytes), String> {
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_native_roots()
        .map_err(|e| format!("loading the system's root certificates: {e}"))?
        .https_or_http()
        .enable_http1()
        .build();
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build(connector);
    let req = hyper::Request::post(url)
        .header("content-type", content_type)
        .header(
            "user-agent",
            concat!("wormvault/", env!("CARGO_PKG_VERSION")),
        )
        .body(Full::new(body))
        .map_err(|e| e.to_string())?;
    let resp = tokio::time::timeout(Duration::from_secs(15), client.request(req))
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let body = tokio::time::timeout(Duration::from_secs(15), resp.into_body().collect())
        .await
        .map_err(|_| "timed out reading the response".to_string())?
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, body))
}
